"""Shared fixtures for the serving tests: one tiny pipeline workdir (fast/, slow/, distill/) and indexes."""

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "load: the loopback load test of `fastslow serve` (about 10 s; "
                                       "run it alone with `bash launch/test.sh -m load`)")
    config.addinivalue_line("markers", "browser: drives the search page in headless Chromium (Debian's chromium "
                                       "and chromium-driver; .ci/run installs them)")


@pytest.fixture(scope="session")
def serving_pipeline(tiny_pipeline):
    return tiny_pipeline


@pytest.fixture(scope="session")
def serving_index(serving_pipeline, tmp_path_factory):
    """An index of the tiny test split (64 images) with the Slow visual tokens stored."""
    from fastslow_jax.serving import engine
    out = str(tmp_path_factory.mktemp("index") / "idx")
    engine.build_index(serving_pipeline, out, dataset="shapes/tiny:test", visual_tokens=True, progress=False)
    return out


@pytest.fixture(scope="session")
def serving_engine(serving_index):
    from fastslow_jax.serving import engine
    return engine.SearchEngine(serving_index)
