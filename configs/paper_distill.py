"""The paper's distillation runs (Slow teacher -> Fast student) on Flickr30K or COCO (ResNet-50 at 224 px).

Distillation runs on the target dataset, from its fine-tuned Fast (student) and Slow (teacher) runs
(configs/paper_fast.py, configs/paper_slow.py):
  fastslow train --config configs/paper_distill.py:flickr30k --workdir runs/paper/flickr30k_distill --config.data.manual_dir=FLICKR_DIR --config.distill.student_init=runs/paper/flickr30k_fast --config.distill.teacher_workdir=runs/paper/flickr30k_slow
(the same with :coco, COCO_DIR and the coco runs)
Hardware: sized for one accelerator with >= 40 GB (H100 / A100 class), batch 256 (ResNet-50 + MiniLM in
bfloat16: --config.model.dtype=bfloat16). Expected cost: NOT MEASURED here (no GPU and no CC3M on this
machine); ResNet-50 at 224 px costs about 12 GFLOP per image forward + backward, so the 100k CC3M steps
(25.6M images) are ~3e17 FLOP, on the order of 10 GPU-hours at 10 TFLOP/s effective if data loading
keeps up; the fine-tuning runs are 25x smaller; distillation adds the teacher's
forward passes.
Tiny variant (tests; tiny random towers, a fixture folder; ":tiny" = ":flickr30k_tiny"):
  fastslow train --config configs/paper_distill.py:flickr30k_tiny --workdir /tmp/paper_distill_tiny --config.data.manual_dir=DIR --config.distill.teacher_workdir=/tmp/paper_slow_tiny
"""
import ml_collections

import _paper_base
import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, tiny = _paper_base.parse("paper_distill.py", arg)
    c = _paper_base.base("distill", dataset, tiny)
    _shapes_base.fast_model(c, tiny)  # the student; the teacher's model config comes from its workdir
    _paper_base.text_tower(c, tiny)
    c.model.embed_dim = 32 if tiny else 256
    _shapes_base.distill_fields(c, tiny, batch_size=32)
    return c
