import glob
import json
import os
import re
import shlex

import numpy as np
import pytest

from fastslow_jax import cli
from fastslow_jax import config as config_lib
from fastslow_jax.retrieval import metrics as metrics_lib
from fastslow_jax.retrieval.evaluate import ROW_KEYS, Evaluator
from fastslow_jax.train import loop
from tests.conftest import CONFIGS, REPO


def _docstring_commands(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    doc = re.match(r'\s*"""(.*?)"""', text, re.S).group(1)
    return [shlex.split(line.strip()) for line in doc.splitlines() if line.strip().startswith("fastslow ")]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "[!_]*.py"))), ids=os.path.basename)
def test_every_config_loads_and_its_docstring_commands_parse(path):
    commands = _docstring_commands(path)
    assert commands, f"{path} docstring has no 'fastslow ...' command"
    for argv in commands:
        overrides, rest = config_lib.split_overrides(argv[1:])
        args = cli._parser().parse_args(rest)
        if getattr(args, "config", None):
            spec = args.config
            assert os.path.exists(os.path.join(REPO, spec.split(":")[0])), spec
            cfg = config_lib.load_config(os.path.join(REPO, spec), overrides)
            assert cfg.task in ("fast", "slow", "distill")
    config_lib.load_config(path + ":tiny")


def test_unknown_key_is_one_clear_error(capsys):
    rc = cli.main(["train", "--config", os.path.join(CONFIGS, "shapes_fast.py:tiny"), "--workdir", "/tmp/unused",
                   "--config.model.widht=3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown config key 'model.widht'" in err and "did you mean" in err and "Traceback" not in err


def test_bad_value_is_one_clear_error(capsys):
    rc = cli.main(["train", "--config", os.path.join(CONFIGS, "shapes_fast.py:tiny"), "--workdir", "/tmp/unused",
                   "--config.train.steps=many"])
    assert rc == 2
    assert "config key 'train.steps' expects int" in capsys.readouterr().err


def test_a_clip_text_tower_is_refused_with_one_clear_error(tmp_path, capsys):
    """data.tokenizer is WordPiece only: a CLIP text tower would get BERT ids and pool at the wrong token."""
    wd = tmp_path / "clip_text"
    rc = cli.main(["train", "--config", os.path.join(CONFIGS, "shapes_fast.py:tiny"), "--workdir", str(wd),
                   "--config.model.text.name=clip"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "model.text.name='clip' cannot run end to end: data.tokenizer is a WordPiece tokenizer" in err
    assert not wd.exists()  # refused before any work
    cfg = config_lib.load_config(os.path.join(CONFIGS, "shapes_fast.py:tiny"), ["model.text.name=clip"])
    with pytest.raises(ValueError, match="CLIP checkpoint's own BPE tokenizer"):
        loop.setup(cfg)  # the same refusal for eval, index and serve, which all build their run here


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["eval", "--workdir", str(tmp_path)])
    assert rc == 1
    assert "holds no config.json" in capsys.readouterr().err


def test_train_then_eval_writes_rows_that_match_an_independent_computation(tmp_path, capsys):
    wd = str(tmp_path / "run")
    assert cli.main(["train", "--config", os.path.join(CONFIGS, "shapes_fast.py:tiny"), "--workdir", wd,
                     "--config.train.steps=30", "--config.mesh.fsdp=2", "--no-progress"]) == 0
    out = str(tmp_path / "eval.json")
    assert cli.main(["eval", "--workdir", wd, "--split", "test", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "t2i R@1" in printed and "fast" in printed
    rows = json.load(open(out))
    assert len(rows) == 1 and set(ROW_KEYS) <= set(rows[0])
    row = rows[0]
    assert (row["dataset"], row["split"], row["method"], row["k"], row["gallery"]) == (
        "shapes/tiny", "test", "fast", None, 64)
    assert row["ms_per_query"] > 0
    # recompute recall from the embeddings with a plain argsort, independently of metrics.py
    run, state = loop.load_trained(wd)
    ev = Evaluator(run)
    split = ev.split("test")
    img, txt = ev.scorer.embed_images(state, split), ev.scorer.embed_texts(state, split.captions)
    order = np.argsort(-(txt @ img.T), axis=1, kind="stable")
    hit1 = np.mean(order[:, 0] == split.caption_to_image) * 100
    hit5 = np.mean([g in o[:5] for g, o in zip(split.caption_to_image, order)]) * 100
    assert row["t2i_r1"] == pytest.approx(hit1, abs=1e-6)
    assert row["t2i_r5"] == pytest.approx(hit5, abs=1e-6)
    m = metrics_lib.retrieval_metrics(txt @ img.T, split.caption_to_image)
    assert row["i2t_r10"] == pytest.approx(m["i2t_r10"])
