"""Slow captioner on the emoji benchmark (EfficientNet-Lite0 backbone, fine-grained P5 -> P4 -> P3).

Run, with the backbone from the Fast run (launch/emoji.sh runs the whole benchmark):
  fastslow train --config configs/emoji_slow.py --workdir runs/emoji/slow --config.model.vision_init=runs/emoji/fast_init
Hardware: 2 CPU cores. Measured there: 0.46 s/step at batch 32 (launch/emoji.sh's 1,800 steps: 14 min).
The decoder predicts only the 3,528 token ids of the training captions plus an 'other' class
(model.slow.output_vocab=train), not MiniLM's 30,522: exhaustive Slow retrieval over the 758 test images
cost 341 ms per query (3.0 s with the whole vocabulary).
Tiny variant (tests):
  fastslow train --config configs/emoji_slow.py:tiny --workdir /tmp/emoji_slow_tiny --config.data.manual_dir=DIR
"""
import ml_collections

import _emoji_base
import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = _emoji_base.check_arg("emoji_slow.py", arg)
    c = _emoji_base.base("slow", tiny)
    _shapes_base.slow_model(c, tiny)
    c.model.slow.max_len = 24
    # predict the 3,528 ids of the training labels and keywords (+ 'other'), not MiniLM's 30,522
    c.model.slow.output_vocab = "train"
    c.train.batch_size = 8 if tiny else 32
    c.optim.lr = 1e-3  # the decoder starts from scratch (only the backbone is pretrained)
    c.eval.limit = 0 if tiny else 200  # exhaustive Slow validation is Q x N decoder passes
    return c
