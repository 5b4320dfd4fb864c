"""Fast dual encoder on the emoji benchmark: MiniLM text and EfficientNet-Lite0 image towers, both locked.

Data first (npm, once): bash launch/fetch_emoji.sh data/emoji ; it is built on first use.
Run:
  fastslow train --config configs/emoji_fast.py --workdir runs/emoji/fast_init
The whole benchmark (Fast, Slow, distilled Fast, re-ranking; one eval.json table): bash launch/emoji.sh
What it trains: the two heads and the temperature on top of the locked towers (LiT with the text tower
locked too), images upsampled to the backbone's 224 px, multi-positive InfoNCE (same caption text or same
image = positives), on the CLDR labels. The image feature is the mean of C5, C4 and C3 at 224 px and again at
128 px, concatenated (model.pool_levels / model.pool_sizes), with dropout 0.3 in training, under a linear
head; the text feature is MiniLM's layers 2, 4 and 6 mean-pooled and concatenated (model.text_pool_layers),
under a linear head plus a residual MLP (model.text_head=mlp).
Both towers' features are computed once and cached (model.freeze_vision / model.freeze_text), so a step costs
a pair of matmuls. Why locked: fully fine-tuning both towers on ~6k images at 64 px scored test R@1 9.8 (the
previous default); tuning MiniLM's top layer over cached lower layers cost 19 min for 500 steps at batch 128
here and scored 27.5 R@1 on held-out train concepts against 40.6 for the locked tower (heads-only, 3,000 steps).
What each choice gave is in _emoji_base.py (held-out train concepts and validation; never test).
Measured (2 CPU cores shared with other jobs): with C5 alone at 224 px and 3,000 steps (the previous default)
the 5,752 training images' features took 7 min 17 s, the steps 14 min 10 s; validation (152 images) t2i R@1
36.8 / R@5 61.8 / R@10 71.7 (fine-tuned towers at 64 px: R@1 18.4 / R@10 65.1 there).
Tiny variant (tests; random tiny towers, a fixture folder):
  fastslow train --config configs/emoji_fast.py:tiny --workdir /tmp/emoji_fast_tiny --config.data.manual_dir=DIR
"""
import ml_collections

import _emoji_base
import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = _emoji_base.check_arg("emoji_fast.py", arg)
    c = _emoji_base.base("fast", tiny)
    _shapes_base.fast_model(c, tiny)
    _emoji_base.pretrained_text(c, tiny)
    _emoji_base.locked_towers(c, tiny)
    c.model.embed_dim = 32 if tiny else 256
    return c
