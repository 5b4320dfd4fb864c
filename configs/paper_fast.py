"""The paper's Fast runs: CC3M pretraining, then Flickr30K or COCO fine-tuning (ResNet-50 at 224 px).

Pretraining, then fine-tuning from it (the same with :coco and your COCO folder):
  fastslow train --config configs/paper_fast.py:cc3m --workdir runs/paper/cc3m_fast --config.data.manual_dir=CC3M_DIR --config.model.vision.pretrained=RESNET50_DIR
  fastslow train --config configs/paper_fast.py:flickr30k --workdir runs/paper/flickr30k_fast --config.data.manual_dir=FLICKR_DIR --config.model.init_from=runs/paper/cc3m_fast
Hardware: sized for one accelerator with >= 40 GB (H100 / A100 class), batch 256 (ResNet-50 + MiniLM in
bfloat16: --config.model.dtype=bfloat16). Expected cost: NOT MEASURED here (no GPU and no CC3M on this
machine); ResNet-50 at 224 px costs about 12 GFLOP per image forward + backward, so the 100k CC3M steps
(25.6M images) are ~3e17 FLOP, on the order of 10 GPU-hours at 10 TFLOP/s effective if data loading
keeps up; the fine-tuning runs are 25x smaller.
Tiny variant (tests; tiny random towers, a fixture folder; ":tiny" = ":flickr30k_tiny"):
  fastslow train --config configs/paper_fast.py:flickr30k_tiny --workdir /tmp/paper_fast_tiny --config.data.manual_dir=DIR
"""
import ml_collections

import _paper_base
import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, tiny = _paper_base.parse("paper_fast.py", arg)
    c = _paper_base.base("fast", dataset, tiny)
    _shapes_base.fast_model(c, tiny)
    _paper_base.text_tower(c, tiny)
    c.model.embed_dim = 32 if tiny else 256
    return c
