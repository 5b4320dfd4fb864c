"""What a workdir is (fastslow_jax/workdir.py), on hand-written config.json files: no training needed."""
import json

from fastslow_jax import workdir as workdir_lib


def _run(path, **cfg):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))


def test_pipeline_detection_embedding_run_and_the_relocated_teacher(tmp_path):
    demo = tmp_path / "demo"
    _run(demo / "slow", task="slow")
    _run(demo / "fast", task="fast")
    assert workdir_lib.is_pipeline(str(demo)) and not workdir_lib.is_run(str(demo))
    assert not workdir_lib.is_pipeline(str(demo / "fast")) and workdir_lib.is_run(str(demo / "fast"))
    assert workdir_lib.embedding_run(str(demo)) == "fast"
    # a distillation run whose teacher was recorded relative to another working directory
    _run(demo / "distill", task="distill", distill={"teacher_workdir": "runs/elsewhere/slow"})
    assert workdir_lib.embedding_run(str(demo)) == "distill"
    assert workdir_lib.relocated(str(demo), "distill") == [f"distill.teacher_workdir={demo / 'slow'}"]
    # nothing to relocate: the recorded teacher exists, or the run is no distillation, or no local teacher
    _run(tmp_path / "real_teacher", task="slow")
    (demo / "distill" / "config.json").write_text(json.dumps(
        {"task": "distill", "distill": {"teacher_workdir": str(tmp_path / "real_teacher")}}))
    assert workdir_lib.relocated(str(demo), "distill") == []
    assert workdir_lib.relocated(str(demo), "fast") == []
    assert workdir_lib.relocated(str(demo), "missing") == []
