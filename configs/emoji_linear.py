"""The linear-probe baseline of the emoji benchmark: frozen EfficientNet-Lite0 + frozen MiniLM, two linear heads.

What a practitioner tries first with the same offline assets: images upsampled whole to 224 px (bicubic),
the mean of the last 1280-channel map; MiniLM mean-pooled; two linear maps to 256-d trained with symmetric
InfoNCE on the train concepts' CLDR labels only (no keywords; images sharing a label in a batch are positives),
batch 256, AdamW lr 1e-3, learned temperature from 0.07. Both towers' features are computed once and cached, so the 3,000 steps are cheap.
Run (launch/emoji.sh runs it as the table's baseline row):
  fastslow train --config configs/emoji_linear.py --workdir runs/emoji/linear
Tiny variant (tests):
  fastslow train --config configs/emoji_linear.py:tiny --workdir /tmp/emoji_linear_tiny --config.data.manual_dir=DIR
"""
import ml_collections

import _emoji_base
import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = _emoji_base.check_arg("emoji_linear.py", arg)
    c = _emoji_base.base("fast", tiny)
    _shapes_base.fast_model(c, tiny)
    _emoji_base.pretrained_text(c, tiny)
    _emoji_base.locked_towers(c, tiny)
    c.model.embed_dim = 32 if tiny else 256
    c.model.pool_levels = ("C5",)  # the classic global pool of the last map, at the input size only
    c.model.pool_sizes = ()
    c.model.feature_dropout = 0.0
    c.model.text_pool_layers = ()  # MiniLM mean-pooled (its last layer), two linear heads
    c.model.text_head = "linear"
    c.model.image_head = "linear"
    c.data.first_caption_prob = 1.0  # labels only
    c.loss.multi_positive = True  # images that share a label in a batch are positives
    c.train.batch_size = 8 if tiny else 256
    c.train.steps = 4 if tiny else 3000
    c.optim.lr = 1e-3
    c.optim.weight_decay = 1e-4
    return c
