"""Checkpoint readers: torch files in both layouts read without torch's unpickler, malicious pickles
refused before anything runs, and the assign report."""
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from flax import nnx

from fastslow_jax.models import layers, weights

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _legacy_file(path, main_obj, sys_info=None):
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, sys_info or {"little_endian": True, "protocol_version": 1001}, main_obj, []):
            pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("where", ["legacy-state-dict", "legacy-sys-info", "zip"])
def test_malicious_pickles_are_refused_before_running(tmp_path, where):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    if where == "legacy-state-dict":
        _legacy_file(path, {"w": Evil(marker)})
    elif where == "legacy-sys-info":
        _legacy_file(path, {}, sys_info=Evil(marker))
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps({"w": Evil(marker)}, protocol=2))
    with pytest.raises(weights.CheckpointError, match=r"evil.pth: refusing to unpickle global posix.system \(only "
                                                      r"tensor-rebuild globals are allowed"):
        weights.read_checkpoint(path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Evil(marker)))  # the same payload does run under plain pickle
    assert marker.exists()


def test_torch_files_in_both_layouts_read_exactly(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"plain": torch.randn(3, 5), "transposed": base.T, "slice": base[1:3, ::2], "ints": torch.tensor([7, -3]),
          "scalar": torch.tensor(2.5), "conv": torch.randn(8, 3, 3, 3), "empty": torch.zeros(0, 4)}
    for legacy in (True, False):
        path = str(tmp_path / f"sd_{legacy}.pth")
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        assert zipfile.is_zipfile(path) is not legacy
        got = weights.read_checkpoint(path)
        assert got.keys() == sd.keys()
        for k, v in sd.items():
            assert got[k].dtype == v.numpy().dtype and np.array_equal(got[k], v.numpy()), k


def test_tensors_that_reach_past_their_storage_are_refused():
    with pytest.raises(weights.CheckpointError, match="does not fit its storage of 4 elements"):
        weights._strided(np.zeros(4, np.float32), 1, (2, 2), (2, 1))
    assert weights._strided(np.arange(6.0), 1, (2, 2), (2, 1)).tolist() == [[1, 2], [3, 4]]


def test_truncated_and_non_checkpoint_files_fail_clearly(tmp_path):
    path = str(tmp_path / "sd.pth")
    torch.save({"w": torch.ones(100)}, path, _use_new_zipfile_serialization=False)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-10])
    with pytest.raises(weights.CheckpointError, match="truncated storage"):
        weights.read_checkpoint(path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(weights.CheckpointError, match="junk.bin: not a readable torch checkpoint"):
        weights.read_checkpoint(str(junk))
    with pytest.raises(weights.CheckpointError, match="does not exist"):
        weights.read_checkpoint(str(tmp_path / "nope.safetensors"))
    with pytest.raises(weights.CheckpointError, match="neither an existing path nor one of"):
        weights.resolve("no-such-weights")


def test_assign_writes_transposed_kernels_and_reports_everything_wrong_at_once():
    mlp = layers.MLP(3, 4, rngs=nnx.Rngs(0))
    w1, b1 = np.arange(12.0).reshape(4, 3), np.arange(4.0)
    entries = weights._linear("fc1.weight", "intermediate.kernel", w1) + [weights.Entry("fc1.bias", "intermediate.bias", b1)]
    before = np.asarray(mlp.output.kernel[...]).copy()
    left = weights.assign(mlp, entries, source="ckpt", allow_missing=lambda p: p.startswith("output."))
    assert left == ["output.bias", "output.kernel"]
    assert np.array_equal(np.asarray(mlp.intermediate.kernel[...]), w1.T)
    assert np.array_equal(np.asarray(mlp.intermediate.bias[...]), b1)
    bad = [weights.Entry("fc1.weight", "intermediate.kernel", np.zeros((4, 4))), weights.Entry("x", "nowhere", b1)]
    with pytest.raises(weights.CheckpointError) as e:
        weights.assign(mlp, bad, source="ckpt", unexpected=["head.weight"])
    assert str(e.value) == ("ckpt does not fit MLP: 3 missing [intermediate.bias, output.bias, output.kernel]; "
                            "2 unexpected [head.weight, x]; 1 mis-shaped [fc1.weight (4, 4) vs intermediate.kernel (3, 4)]")
    assert np.array_equal(np.asarray(mlp.output.kernel[...]), before)  # nothing written on error
