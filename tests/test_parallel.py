import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fastslow_jax import parallel
from fastslow_jax.models.fast import FastModel
from tests.conftest import tiny_config

RULES = {"batch": ("data", "fsdp"), "embed": "fsdp", "mlp": "model", "heads": "model", "vocab": "model"}


def test_eight_fake_devices_available():
    assert jax.device_count() == 8


def test_make_mesh_fills_minus_one_and_validates():
    mesh = parallel.make_mesh({"data": -1, "fsdp": 2, "model": 1})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "model": 1}
    with pytest.raises(ValueError, match="needs 6 devices, but 8 are available"):
        parallel.make_mesh({"data": 3, "fsdp": 2})
    with pytest.raises(ValueError, match="unknown mesh axes \\['tensor'\\]"):
        parallel.make_mesh({"tensor": 8})
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        parallel.make_mesh({"data": -1, "fsdp": -1})


def test_logical_to_mesh_rules():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    assert parallel.logical_to_mesh(("embed", "mlp"), (64, 128), RULES, mesh) == P("fsdp", "model")
    assert parallel.logical_to_mesh(("batch", None), (16, 3), RULES, mesh) == P(("data", "fsdp"), None)
    # a dimension that the mesh axis does not divide stays replicated
    assert parallel.logical_to_mesh(("embed", "mlp"), (63, 128), RULES, mesh) == P(None, "model")
    # a mesh axis is used at most once per spec
    assert parallel.logical_to_mesh(("heads", "mlp"), (8, 8), RULES, mesh) == P("model", None)
    assert parallel.logical_to_mesh(None, (4,), RULES, mesh) == P()


def test_state_shardings_follow_parameter_annotations():
    cfg = tiny_config()
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    model = nnx.eval_shape(lambda: FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0)))
    shardings = parallel.state_shardings(nnx.state(model, nnx.Param), RULES, mesh)
    mlp = shardings["text"]["layers"][0]["mlp"]
    assert mlp["intermediate"]["kernel"].spec == P("fsdp", "model")  # (embed, mlp)
    assert mlp["output"]["kernel"].spec == P("model", "fsdp")        # (mlp, embed)
    assert shardings["text"]["embeddings"]["word"]["embedding"].spec == P(None, "fsdp")  # vocab 131 is odd
    assert shardings["logit_scale"].spec == P()


def test_batch_sharding_and_divisor():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    assert parallel.batch_sharding(mesh, RULES).spec == P(("data", "fsdp"))
    assert parallel.batch_divisor(mesh, RULES) == 8
    assert parallel.batch_divisor(mesh, {"batch": "data"}) == 2
