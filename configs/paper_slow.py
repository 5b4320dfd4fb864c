"""The paper's Slow runs: CC3M pretraining, then Flickr30K or COCO fine-tuning (ResNet-50 at 224 px).

Pretraining, then fine-tuning from it (the same with :coco and your COCO folder):
  fastslow train --config configs/paper_slow.py:cc3m --workdir runs/paper/cc3m_slow --config.data.manual_dir=CC3M_DIR --config.model.vision.pretrained=RESNET50_DIR
  fastslow train --config configs/paper_slow.py:flickr30k --workdir runs/paper/flickr30k_slow --config.data.manual_dir=FLICKR_DIR --config.model.init_from=runs/paper/cc3m_slow
Hardware: sized for one accelerator with >= 40 GB (H100 / A100 class), batch 256 (ResNet-50 + MiniLM in
bfloat16: --config.model.dtype=bfloat16). Expected cost: NOT MEASURED here (no GPU and no CC3M on this
machine); ResNet-50 at 224 px costs about 12 GFLOP per image forward + backward, so the 100k CC3M steps
(25.6M images) are ~3e17 FLOP, on the order of 10 GPU-hours at 10 TFLOP/s effective if data loading
keeps up; the fine-tuning runs are 25x smaller.
Tiny variant (tests; tiny random towers, a fixture folder; ":tiny" = ":flickr30k_tiny"):
  fastslow train --config configs/paper_slow.py:flickr30k_tiny --workdir /tmp/paper_slow_tiny --config.data.manual_dir=DIR
"""
import ml_collections

import _paper_base
import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, tiny = _paper_base.parse("paper_slow.py", arg)
    c = _paper_base.base("slow", dataset, tiny)
    _shapes_base.slow_model(c, tiny)
    c.model.slow.max_len = 32
    c.model.slow.width = 32 if tiny else 512
    c.model.slow.fpn_width = 32 if tiny else 256
    c.model.slow.num_heads = 2 if tiny else 8
    c.model.slow.mlp_dim = 64 if tiny else 2048
    c.train.batch_size = 8 if tiny else 128
    c.eval.limit = 0 if tiny else 1000  # exhaustive Slow validation is Q x N decoder passes
    c.eval.queries_per_image = 1
    return c
