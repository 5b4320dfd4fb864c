import ml_collections
import pytest

from fastslow_jax.train.optim import make_schedule


def _cfg(**kw):
    return ml_collections.ConfigDict({**dict(lr=2e-3, warmup_steps=100, end_lr_factor=0.01, decay_steps=0), **kw})


def test_cosine_horizon_defaults_to_the_run_and_can_outlast_it():
    run_length = make_schedule(_cfg(), 700)
    assert float(run_length(50)) == pytest.approx(1e-3)  # half-way up the warmup
    assert float(run_length(700)) == pytest.approx(2e-5)  # the end value at the last step
    # horizon 1000, run 700: at step 700 the cosine is 600/900 of the way down: cos(2 pi / 3) = -1/2
    longer = make_schedule(_cfg(decay_steps=1000), 700)
    assert float(longer(700)) == pytest.approx(2e-5 + (2e-3 - 2e-5) * 0.25, rel=1e-5)
    assert float(longer(100)) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="decay_steps"):
        make_schedule(_cfg(decay_steps=-5), 700)
