"""Distil the emoji Slow teacher into the emoji Fast student (in-batch teacher scoring).

Run (launch/emoji.sh runs the whole benchmark):
  fastslow train --config configs/emoji_distill.py --workdir runs/emoji/distill --config.distill.teacher_workdir=runs/emoji/slow --config.distill.student_init=runs/emoji/fast_init
The student is emoji_fast.py's: heads over locked towers (the towers still run on the batch images here).
Hardware: 2 CPU cores. Measured there with the previous defaults (fully fine-tuned 64 px student, a from-scratch teacher): 1.6 s/step with the in-batch teacher (16 x 16 pairs; a Slow teacher
with the compact output vocabulary), 200 steps in 6 min with start-up; the InfoNCE-only control
(distill.weight=0) 200 steps in 5 min 18 s.
Tiny variant (tests; with a tiny teacher run):
  fastslow train --config configs/emoji_distill.py:tiny --workdir /tmp/emoji_distill_tiny --config.data.manual_dir=DIR --config.distill.teacher_workdir=/tmp/emoji_slow_tiny
"""
import ml_collections

import _emoji_base
import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = _emoji_base.check_arg("emoji_distill.py", arg)
    c = _emoji_base.base("distill", tiny)
    _shapes_base.fast_model(c, tiny)  # the student; the teacher's model config comes from its workdir
    _emoji_base.pretrained_text(c, tiny)
    base = _emoji_base.base("distill", tiny)
    _emoji_base.locked_towers(c, tiny)  # the student as emoji_fast.py trains it: heads over locked towers
    c.train = base.train  # but the distillation schedule: the teacher scores images, so steps stay few
    c.model.embed_dim = 32 if tiny else 256
    _shapes_base.distill_fields(c, tiny, batch_size=16)
    return c
