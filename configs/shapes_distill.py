"""Distil a trained Slow teacher into a Fast student on `shapes` (in-batch teacher scoring).

Needs a trained Slow run (the teacher) and, optionally, a trained Fast run to start the student from:
  fastslow train --config configs/shapes_distill.py --workdir runs/shapes_distill --config.distill.teacher_workdir=runs/shapes_slow --config.distill.student_init=runs/shapes_fast
Offline top-M teacher scores instead (the teacher scores each training caption's top-M Fast candidates
once, before training; needs student_init):
  fastslow train --config configs/shapes_distill.py --workdir runs/shapes_distill_topm --config.distill.mode=topm --config.distill.teacher_workdir=runs/shapes_slow --config.distill.student_init=runs/shapes_fast
Tiny variant (used by the tests, with tiny teacher and student runs):
  fastslow train --config configs/shapes_distill.py:tiny --workdir /tmp/shapes_distill_tiny --config.distill.teacher_workdir=/tmp/shapes_slow_tiny

Loss: InfoNCE over the batch + distill.weight * KL(p_T || p_S) over the first distill.batch_size
captions x images, with the teacher's log-likelihoods z-scored per caption. It prints the progress
bar (loss, nce, kl) and the student's validation t2i R@1/5/10 at the end.
"""
import ml_collections

import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = _shapes_base.check_arg("shapes_distill.py", arg)
    c = _shapes_base.base("distill", tiny)
    _shapes_base.fast_model(c, tiny)  # the student; the teacher's model config comes from its workdir
    _shapes_base.distill_fields(c, tiny)
    return c
