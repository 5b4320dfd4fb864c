"""Fast dual encoder on the emoji benchmark (MiniLM text, EfficientNet-Lite0 image, both pretrained).

Data first (npm, once): bash launch/fetch_emoji.sh data/emoji ; it is built on first use.
Run:
  fastslow train --config configs/emoji_fast.py --workdir runs/emoji/fast_init
The whole benchmark (Fast, Slow, distilled Fast, re-ranking; one eval.json table): bash launch/emoji.sh
Hardware: 2 CPU cores. Measured there: 1.16 s/step at batch 64 (64 px, max_len 24); launch/emoji.sh's 400
steps took 9 min 19 s including start-up.
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
    c.model.embed_dim = 32 if tiny else 256
    return c
