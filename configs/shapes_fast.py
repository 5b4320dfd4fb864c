"""Fast dual encoder on the built-in `shapes` dataset (the first stage of the README demo).

Run (about 5 minutes of training on 2 CPU cores):
  fastslow train --config configs/shapes_fast.py --workdir runs/shapes_fast
  fastslow eval --workdir runs/shapes_fast --split test --output runs/shapes_fast/eval.json

Tiny variant (a smoke test; seconds on a laptop CPU; used by the tests):
  fastslow train --config configs/shapes_fast.py:tiny --workdir /tmp/shapes_fast_tiny

What it prints: a progress bar with loss and examples/s, validation R@1/5/10 at the end, and for
`eval` a table of text->image and image->text R@1/5/10 and median rank on the 1,000-image test
gallery (5,000 caption queries). Chance t2i R@1 is 0.1%.
"""
import ml_collections

import _shapes_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = _shapes_base.check_arg("shapes_fast.py", arg)
    c = _shapes_base.base("fast", tiny)
    _shapes_base.fast_model(c, tiny)
    return c
