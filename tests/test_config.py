"""Tests for fastslow_jax.config: loading config files, overrides, argv splitting, JSON."""

import json
import textwrap

import ml_collections
import pytest

from fastslow_jax.config import (
    ConfigError,
    apply_overrides,
    config_from_json,
    flatten,
    load_config,
    split_overrides,
    to_json,
)

CONFIG_WITH_ARG = '''
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.arg = arg
    c.variant = arg or "default"
    c.seed = 0
    c.model = ml_collections.ConfigDict()
    c.model.width = 64 if arg != "tiny" else 8
    c.model.depth = 2
    c.model.dropout = 0.1
    c.model.use_bias = True
    c.model.name = "fast"
    c.model.levels = ("p5", "p4", "p3")
    c.model.kernel = (3, 3)
    c.model.scales = [0.5, 1.0]
    c.model.init = None
    c.model.vision = ml_collections.ConfigDict({"variant": "resnet50", "frozen": False})
    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.lr = 3e-4
    c.train.decay_steps = ml_collections.config_dict.placeholder(int)
    c.train.schedule = ()
    c.train.mixed = (1, "a")
    return c
'''


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def cfg_path(tmp_path):
    return write(tmp_path, CONFIG_WITH_ARG)


@pytest.fixture
def config(cfg_path):
    return load_config(cfg_path, lock=False)


# ---- loading ------------------------------------------------------------------------------------


def test_arg_passing(cfg_path):
    assert load_config(cfg_path).arg is None            # no ':' -> get_config's own default
    assert load_config(cfg_path + ":tiny").arg == "tiny"
    assert load_config(cfg_path + ":tiny").model.width == 8
    assert load_config(cfg_path + ":").arg == ""        # present but empty
    assert load_config(cfg_path + ":a:b").arg == "a:b"  # split on the first ':' only


def test_required_parameter_gets_none(tmp_path):
    path = write(tmp_path, """
        import ml_collections
        def get_config(arg):
            return ml_collections.ConfigDict({"arg": arg, "kind": type(arg).__name__})
    """)
    assert load_config(path).kind == "NoneType"
    assert load_config(path + ":x").arg == "x"


def test_get_config_without_parameter(tmp_path):
    path = write(tmp_path, """
        import ml_collections
        def get_config():
            return ml_collections.ConfigDict({"a": 1})
    """)
    assert load_config(path).a == 1
    with pytest.raises(ConfigError, match=r"takes no argument, but the spec gave ':x'"):
        load_config(path + ":x")


def test_plain_dict_is_accepted_and_other_types_rejected(tmp_path):
    path = write(tmp_path, "def get_config(arg=None):\n    return {'a': {'b': 1}}\n")
    config = load_config(path)
    assert isinstance(config, ml_collections.ConfigDict) and config.a.b == 1
    bad = write(tmp_path, "def get_config(arg=None):\n    return 3\n", name="bad.py")
    with pytest.raises(ConfigError, match=r"returned int, expected an ml_collections.ConfigDict"):
        load_config(bad)


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(ConfigError, match=r"config file '.*nope.py' does not exist"):
        load_config(missing + ":tiny")
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(str(tmp_path))
    with pytest.raises(ConfigError, match="no file path"):
        load_config(":tiny")


def test_missing_get_config(tmp_path):
    path = write(tmp_path, "x = 1\n")
    with pytest.raises(ConfigError, match=r"config file '.*cfg.py' defines no get_config\(arg\) function"):
        load_config(path)


def test_errors_in_config_code_are_wrapped(tmp_path):
    syntax = write(tmp_path, "def get_config(:\n", name="syntax.py")
    with pytest.raises(ConfigError, match=r"'.*syntax.py' failed to import \(line 1\): SyntaxError"):
        load_config(syntax)
    raises = write(tmp_path, """
        def get_config(arg=None):
            raise ValueError(f"unknown variant {arg!r}")
    """, name="raises.py")
    with pytest.raises(ConfigError, match=r"get_config\('zzz'\) in '.*raises.py' raised ValueError: unknown variant 'zzz'") as e:
        load_config(raises + ":zzz")
    assert isinstance(e.value.__cause__, ValueError)


def test_config_can_import_sibling_module_and_use_dataclasses(tmp_path):
    write(tmp_path, "WIDTH = 17\n", name="common_cfg_sibling.py")
    path = write(tmp_path, """
        import dataclasses
        import ml_collections
        import common_cfg_sibling

        @dataclasses.dataclass
        class Size:
            width: int

        def get_config(arg=None):
            return ml_collections.ConfigDict({"width": Size(common_cfg_sibling.WIDTH).width})
    """)
    assert load_config(path).width == 17


def test_sibling_import_inside_get_config(tmp_path):
    write(tmp_path, "DEPTH = 4\n", name="lazy_cfg_sibling.py")
    path = write(tmp_path, """
        import ml_collections
        def get_config(arg=None):
            import lazy_cfg_sibling
            return ml_collections.ConfigDict({"depth": lazy_cfg_sibling.DEPTH})
    """)
    assert load_config(path).depth == 4
    assert str(tmp_path) not in __import__("sys").path  # the folder is only on sys.path meanwhile


def test_frozen_config_is_thawed(tmp_path):
    path = write(tmp_path, """
        import ml_collections
        def get_config(arg=None):
            return ml_collections.FrozenConfigDict({"a": 1, "b": {"c": (1, 2)}})
    """)
    config = load_config(path, ["b.c=3,4"])
    assert not isinstance(config, ml_collections.FrozenConfigDict)
    assert config.b.c == (3, 4)


def test_each_load_is_a_fresh_module(tmp_path):
    path = write(tmp_path, """
        import ml_collections
        COUNT = [0]
        def get_config(arg=None):
            COUNT[0] += 1
            return ml_collections.ConfigDict({"count": COUNT[0]})
    """)
    assert load_config(path).count == 1
    assert load_config(path).count == 1


def test_load_applies_overrides_and_locks(cfg_path):
    config = load_config(cfg_path + ":tiny", ["model.depth=5", "--config.train.lr=0.1"])
    assert config.model.depth == 5 and config.train.lr == 0.1
    with pytest.raises(AttributeError):
        config.model.widht = 3        # locked: a typo in code cannot add a field
    config.model.width = 3            # existing fields can still change
    with config.unlocked():
        config.extra = 1
    assert load_config(cfg_path, lock=False).is_locked is False


def test_load_bad_override_raises(cfg_path):
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        load_config(cfg_path, ["model.widht=3"])


# ---- overrides: value types ---------------------------------------------------------------------


def test_int(config):
    apply_overrides(config, ["train.steps=20", "model.depth=-3"])
    assert config.train.steps == 20 and type(config.train.steps) is int
    assert config.model.depth == -3
    apply_overrides(config, ["train.steps=1e6", "model.depth=1_000"])
    assert config.train.steps == 1_000_000 and type(config.train.steps) is int
    assert config.model.depth == 1000
    with pytest.raises(ConfigError, match=r"^config key 'train.steps' expects int, got 'abc'$"):
        apply_overrides(config, ["train.steps=abc"])
    with pytest.raises(ConfigError, match=r"expects int, got '2.5'"):
        apply_overrides(config, ["train.steps=2.5"])


def test_float(config):
    apply_overrides(config, ["train.lr=1e-3"])
    assert config.train.lr == 1e-3
    apply_overrides(config, ["model.dropout=0"])   # an int is a fine float
    assert config.model.dropout == 0.0 and type(config.model.dropout) is float
    with pytest.raises(ConfigError, match=r"config key 'train.lr' expects float, got 'fast'"):
        apply_overrides(config, ["train.lr=fast"])


@pytest.mark.parametrize("text,value", [
    ("true", True), ("True", True), ("YES", True), ("1", True),
    ("false", False), ("False", False), ("no", False), ("0", False),
])
def test_bool(config, text, value):
    apply_overrides(config, [f"model.use_bias={text}"])
    assert config.model.use_bias is value


def test_bad_bool(config):
    with pytest.raises(ConfigError, match=r"config key 'model.use_bias' expects bool \(true/false/1/0/yes/no\), got 'maybe'"):
        apply_overrides(config, ["model.use_bias=maybe"])


def test_str(config):
    apply_overrides(config, ["model.name=slow", "model.vision.variant=a=b c"])
    assert config.model.name == "slow"
    assert config.model.vision.variant == "a=b c"   # split on the first '=' only
    apply_overrides(config, ["model.name="])
    assert config.model.name == ""
    apply_overrides(config, ["model.name=123"])
    assert config.model.name == "123"


def test_none_valued_field(config):
    apply_overrides(config, ["model.init=/path/to/ckpt"])
    assert config.model.init == "/path/to/ckpt"          # literal_eval fails -> str
    config.model.init = None
    apply_overrides(config, ["model.init=3"])
    assert config.model.init == 3
    config.model.init = None
    apply_overrides(config, ["model.init=(1, 2)"])
    assert config.model.init == (1, 2)
    config.model.init = None
    apply_overrides(config, ["model.init='quoted'"])
    assert config.model.init == "quoted"


def test_none_literal_sets_none(config):
    apply_overrides(config, ["model.name=None", "train.steps=None"])
    assert config.model.name is None and config.train.steps is None


def test_placeholder_uses_declared_type(config):
    apply_overrides(config, ["train.decay_steps=500"])
    assert config.train.decay_steps == 500
    config.train.decay_steps = None
    with pytest.raises(ConfigError, match=r"'train.decay_steps' expects int, got 'x'"):
        apply_overrides(config, ["train.decay_steps=x"])


@pytest.mark.parametrize("text", ["p3,p4", "(p3, p4)", "[p3,p4]", "('p3', 'p4')", "p3, p4,"])
def test_tuple_of_str(config, text):
    apply_overrides(config, [f"model.levels={text}"])
    assert config.model.levels == ("p3", "p4")


@pytest.mark.parametrize("text,value", [
    ("5,7", (5, 7)), ("(1,2)", (1, 2)), ("[1, 2, 3]", (1, 2, 3)), ("5", (5,)), ("5,", (5,)),
    ("()", ()), ("", ()), ("1e3,2", (1000, 2)),
])
def test_tuple_of_int(config, text, value):
    apply_overrides(config, [f"model.kernel={text}"])
    assert config.model.kernel == value and type(config.model.kernel) is tuple
    assert all(type(x) is int for x in config.model.kernel)


def test_list_of_float_keeps_list(config):
    apply_overrides(config, ["model.scales=1,2.5"])
    assert config.model.scales == [1.0, 2.5] and type(config.model.scales) is list
    assert all(type(x) is float for x in config.model.scales)


def test_bad_tuple_element(config):
    with pytest.raises(ConfigError, match=r"config key 'model.kernel' expects a tuple of int \(comma separated, e.g. '1,2,3'\), got 'a,b'"):
        apply_overrides(config, ["model.kernel=a,b"])
    with pytest.raises(ConfigError, match="expects a tuple of int"):
        apply_overrides(config, ["model.kernel=1,,2"])


def test_empty_and_mixed_tuples(config):
    apply_overrides(config, ["train.schedule=(0.1, 'cos', 3)"])
    assert config.train.schedule == (0.1, "cos", 3)
    config.train.schedule = ()
    apply_overrides(config, ["train.schedule=warmup,100"])
    assert config.train.schedule == ("warmup", 100)
    apply_overrides(config, ["train.mixed=7,b"])      # per position: (int, str)
    assert config.train.mixed == (7, "b")


def test_group_cannot_be_set_to_a_value(config):
    with pytest.raises(ConfigError, match=r"config key 'model.vision' is a group of settings.*frozen, variant"):
        apply_overrides(config, ["model.vision=resnet"])


def test_last_override_wins_and_prefix_accepted(config):
    apply_overrides(config, ["--config.seed=1", "seed=2", "--config.seed=3"])
    assert config.seed == 3


def test_works_on_locked_config(config):
    config.lock()
    apply_overrides(config, ["model.width=5", "model.init=abc"])
    assert config.model.width == 5 and config.model.init == "abc"


def test_field_reference_links_follow(tmp_path):
    path = write(tmp_path, """
        import ml_collections
        def get_config(arg=None):
            c = ml_collections.ConfigDict()
            c.width = 16
            c.model = ml_collections.ConfigDict()
            c.model.width = c.get_ref("width")
            return c
    """)
    config = load_config(path, ["width=32"])
    assert config.model.width == 32


# ---- overrides: keys ----------------------------------------------------------------------------


def test_unknown_key_suggestion_text(config):
    with pytest.raises(ConfigError) as e:
        apply_overrides(config, ["model.widht=3"])
    msg = str(e.value)
    assert msg.startswith("unknown config key 'model.widht'; did you mean 'model.width'?")
    assert "(valid keys under 'model': depth, dropout, init, kernel, levels, name, scales, " \
           "use_bias, vision, width)" in msg
    assert "\n" not in msg


def test_unknown_top_level_key(config):
    with pytest.raises(ConfigError) as e:
        apply_overrides(config, ["modle.width=3"])
    msg = str(e.value)
    assert "did you mean 'model.width'?" in msg
    assert "(valid keys at the top level: arg, model, seed, train, variant)" in msg


def test_unknown_key_without_close_match(config):
    with pytest.raises(ConfigError) as e:
        apply_overrides(config, ["train.zzzzzzzz=1"])
    msg = str(e.value)
    assert "did you mean" not in msg
    assert msg == ("unknown config key 'train.zzzzzzzz' (valid keys under 'train': "
                   "decay_steps, lr, mixed, schedule, steps)")


def test_key_below_a_leaf(config):
    with pytest.raises(ConfigError, match=r"config key 'train.steps' holds an int value, not a group of settings, so 'train.steps.x' does not exist"):
        apply_overrides(config, ["train.steps.x=1"])


@pytest.mark.parametrize("bad", ["model.width", "=3", "model..width=3", ".a=1"])
def test_malformed_overrides(config, bad):
    with pytest.raises(ConfigError):
        apply_overrides(config, [bad])


# ---- split_overrides ----------------------------------------------------------------------------


def test_split_overrides():
    argv = [
        "train", "--config=configs/tiny.py:cpu", "--workdir", "/tmp/w",
        "--config.model.width=8", "--config.train.lr", "-0.5", "--config", "other.py",
        "--config.model.levels=p5,p4", "--verbose",
    ]
    overrides, rest = split_overrides(argv)
    assert overrides == ["model.width=8", "train.lr=-0.5", "model.levels=p5,p4"]
    assert rest == [
        "train", "--config=configs/tiny.py:cpu", "--workdir", "/tmp/w",
        "--config", "other.py", "--verbose",
    ]


def test_split_overrides_passes_after_double_dash():
    overrides, rest = split_overrides(["--config.a=1", "--", "--config.b=2"])
    assert overrides == ["a=1"] and rest == ["--", "--config.b=2"]


def test_split_overrides_missing_value():
    with pytest.raises(ConfigError, match=r"'--config.a.b' has no value; write it as '--config.a.b=VALUE'"):
        split_overrides(["--config.a.b"])
    with pytest.raises(ConfigError, match="has no value"):
        split_overrides(["--config.a.b", "--verbose"])
    with pytest.raises(ConfigError, match="names no config key"):
        split_overrides(["--config.=3"])


def test_split_then_load(cfg_path):
    overrides, rest = split_overrides([f"--config={cfg_path}:tiny", "--config.model.depth", "7"])
    assert rest == [f"--config={cfg_path}:tiny"]
    config = load_config(rest[0].split("=", 1)[1], overrides)
    assert config.model.depth == 7 and config.model.width == 8


# ---- flatten / JSON -----------------------------------------------------------------------------


def test_flatten(config):
    flat = flatten(config)
    assert flat["model.width"] == 64
    assert flat["model.vision.variant"] == "resnet50"
    assert flat["model.levels"] == ("p5", "p4", "p3")
    assert flat["train.decay_steps"] is None
    assert "model" not in flat and "model.vision" not in flat
    assert list(flat) == sorted(flat)
    config.empty = ml_collections.ConfigDict()
    assert flatten(config)["empty"] == {}


def test_to_json_format(config):
    text = to_json(config)
    data = json.loads(text)
    assert data["model"]["levels"] == ["p5", "p4", "p3"]
    assert data["model"]["init"] is None
    assert text == json.dumps(data, sort_keys=True, indent=2)


def test_to_json_survives_odd_values():
    import numpy as np
    config = ml_collections.ConfigDict({"a": np.float32(0.5), "b": np.arange(3), "f": len})
    data = json.loads(to_json(config))
    assert data == {"a": 0.5, "b": [0, 1, 2], "f": repr(len)}


def test_json_round_trip(config):
    text = to_json(config)
    back = config_from_json(text)
    assert isinstance(back, ml_collections.ConfigDict)
    assert to_json(back) == text
    assert back.model.levels == ("p5", "p4", "p3")           # lists come back as tuples
    assert back.model.scales == (0.5, 1.0)
    assert back.model.vision.frozen is False
    assert type(back.train.steps) is int and type(back.train.lr) is float
    assert flatten(back) == {k: tuple(v) if isinstance(v, list) else v for k, v in flatten(config).items()}
    # The reloaded config takes overrides like the original.
    apply_overrides(back, ["model.levels=p3", "train.steps=5"])
    assert back.model.levels == ("p3",) and back.train.steps == 5
    assert config_from_json(text, lists_as_tuples=False).model.levels == ["p5", "p4", "p3"]


def test_config_from_json_errors():
    with pytest.raises(ConfigError, match="not valid JSON"):
        config_from_json("{nope")
    with pytest.raises(ConfigError, match="object at the top level, got list"):
        config_from_json("[1, 2]")
