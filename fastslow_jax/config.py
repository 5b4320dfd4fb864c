"""Loading experiment configs and applying command-line overrides (big_vision style).

A config is a Python file with a ``get_config(arg)`` function returning an
``ml_collections.ConfigDict``; the command line names it as ``--config=path/to/file.py:arg`` and
changes single fields with ``--config.a.b=value``::

    overrides, rest = split_overrides(sys.argv[1:])   # pull out --config.a.b=value
    args = parser.parse_args(rest)                     # --config=path:arg and the rest
    config = load_config(args.config, overrides)

Overrides are parsed according to the type of the field they replace, so a typo in a key or a value
that does not fit is a `ConfigError` (one sentence, naming the key and listing the valid ones)
rather than a silent new field. Every message is written for the person at the command line.

`load_config` returns a *locked* ConfigDict by default: reading a missing key always raises in
ml_collections, and locking also makes *writing* a new key raise (``config.modle = ...``), so a typo
in code fails at once instead of creating a field nobody reads. Existing fields can still be
assigned. Code that really needs to add fields does so inside ``with config.unlocked(): ...`` (or
passes ``lock=False``).

`to_json` / `config_from_json` save and reload a run's config (``config.json`` in the workdir).
JSON has no tuples: `to_json` writes tuples as lists, and `config_from_json` turns every list back
into a tuple by default (configs use tuples so values stay hashable, e.g. for Flax module fields).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.machinery
import importlib.util
import inspect
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

__all__ = [
    "ConfigError",
    "load_config",
    "apply_overrides",
    "split_overrides",
    "flatten",
    "to_json",
    "config_from_json",
]

_PREFIX = "--config."
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
_MAX_LISTED_KEYS = 40
_module_counter = itertools.count()


class ConfigError(ValueError):
    """A config cannot be loaded or an override does not fit; the message is one sentence."""


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_config(
    spec: str, overrides: Sequence[str] = (), *, lock: bool = True
) -> ml_collections.ConfigDict:
    """Loads ``get_config(arg)`` from a config file, applies overrides and returns the config.

    Args:
      spec: ``path/to/file.py`` or ``path/to/file.py:arg``. Everything after the first ``:`` is
        passed to ``get_config`` as a string (``"file.py:"`` passes ``""``); without ``:`` the
        function gets ``None``, or is called with no argument when it takes none or gives its
        parameter a default.
      overrides: ``a.b=value`` strings (``--config.a.b=value`` is accepted too), applied in order
        with `apply_overrides`.
      lock: lock the returned config so that assigning a key that does not exist raises.

    Raises:
      ConfigError: missing file, no ``get_config``, ``get_config`` failing or returning something
        other than a ConfigDict / dict, or a bad override.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"config spec must be a non-empty 'path/to/file.py[:arg]' string, got {spec!r}")
    path, sep, arg_text = spec.partition(":")
    arg: str | None = arg_text if sep else None
    if not path:
        raise ConfigError(f"config spec {spec!r} has no file path before ':'")
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}' does not exist (from --config={spec})")
    if not os.path.isfile(path):
        raise ConfigError(f"config path '{path}' is not a file (from --config={spec})")

    # The file's own folder is importable while it runs (at import and inside get_config), so
    # configs can share a sibling module.
    with _folder_on_sys_path(os.path.dirname(os.path.abspath(path))):
        module = _import_file(path)
        get_config = getattr(module, "get_config", None)
        if get_config is None or not callable(get_config):
            raise ConfigError(f"config file '{path}' defines no get_config(arg) function")

        call_args = _get_config_args(get_config, arg, path)
        shown = f"get_config({', '.join(repr(a) for a in call_args)})"
        try:
            config = get_config(*call_args)
        except ConfigError:
            raise
        except Exception as e:  # Errors in config code: say where, keep the traceback as cause.
            raise ConfigError(f"{shown} in '{path}' raised {type(e).__name__}: {e}") from e

    if isinstance(config, ml_collections.FrozenConfigDict):
        config = ml_collections.ConfigDict(config.as_configdict())
    elif isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(dict(config))
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{shown} in '{path}' returned {type(config).__name__}, expected an ml_collections.ConfigDict"
        )

    apply_overrides(config, overrides)
    if lock:
        config.lock()
    return config


def _import_file(path: str):
    """Imports a Python file by path under a unique module name (registered in sys.modules)."""
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"_fastslow_config_{stem}_{next(_module_counter)}"
    loader = importlib.machinery.SourceFileLoader(name, path)
    module_spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if module_spec is None:  # pragma: no cover - SourceFileLoader accepts any file name.
        raise ConfigError(f"config file '{path}' cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered so dataclasses / pickling inside the config file work; the name is unique.
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        where = ""
        if isinstance(e, SyntaxError) and e.lineno:
            where = f" (line {e.lineno})"
        raise ConfigError(
            f"config file '{path}' failed to import{where}: {type(e).__name__}: {e}"
        ) from e
    return module


@contextlib.contextmanager
def _folder_on_sys_path(folder: str):
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:  # pragma: no cover - the config removed it itself.
            pass


def _get_config_args(get_config, arg: str | None, path: str) -> tuple:
    """Which arguments to pass to get_config, given its signature and the ':arg' of the spec."""
    try:
        params = list(inspect.signature(get_config).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature.
        return (arg,)
    positional = [
        p for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if not positional and not takes_varargs:
        if arg is not None:
            raise ConfigError(
                f"get_config() in '{path}' takes no argument, but the spec gave ':{arg}'"
            )
        return ()
    if arg is None:
        if not positional or positional[0].default is not inspect.Parameter.empty:
            return ()  # `def get_config(arg="tiny")` or `*args`: let get_config use its default.
    return (arg,)


# ----------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.a.b=v`` / ``--config.a.b v`` arguments from the rest of argv.

    Returns ``(overrides, rest)``: overrides as ``a.b=v`` strings in command-line order, and the
    other arguments (for argparse) in their order. ``--config path`` and ``--config=path`` (no dot)
    are not overrides and stay in ``rest``. In the two-argument form the next argument is the value
    (a negative number is fine) unless it starts with ``--``. Everything after a bare ``--`` is
    passed through untouched.
    """
    overrides: list[str] = []
    rest: list[str] = []
    argv = list(argv)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        if a.startswith(_PREFIX):
            body = a[len(_PREFIX):]
            key, eq, value = body.partition("=")
            if not key:
                raise ConfigError(f"argument '{a}' names no config key after '--config.'")
            if eq:
                overrides.append(f"{key}={value}")
            else:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise ConfigError(
                        f"argument '{a}' has no value; write it as '{a}=VALUE' or '{a} VALUE'"
                    )
                overrides.append(f"{key}={argv[i + 1]}")
                i += 1
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Sets existing fields of ``config`` from ``a.b.c=value`` strings, in order; returns config.

    Each value is parsed according to the type of the field it replaces:

    * int: ``12``, ``-3``, ``1_000``, and integral floats such as ``1e6``;
    * float: anything ``float()`` reads (``3e-4``, ``inf``); ints are accepted;
    * bool: ``true/false/1/0/yes/no``, any case;
    * str: the text as is;
    * tuple / list: ``a,b,c`` or a literal such as ``(1, 2)`` / ``[p5,p4,p3]`` (quotes optional for
      strings, ``()`` / ``[]`` / empty for empty); elements are converted to the type of the
      existing elements and the container keeps its type;
    * a field that is None: ``ast.literal_eval`` of the text, or the text itself as a string;
    * a placeholder (``ml_collections.config_dict.placeholder(int)``): its declared type.

    ``None`` (exactly) sets any non-group field to None. A group (ConfigDict) cannot be replaced by
    a value; set its keys instead. Works on locked configs (no key is ever added).

    Raises:
      ConfigError: malformed override, unknown key (with suggestions and the valid keys), or a
        value that does not parse as the field's type.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    for override in overrides:
        key, value = _split_override(override)
        parent, leaf = _resolve_parent(config, key)
        field_type = parent.get_type(leaf)
        current = parent[leaf]
        if isinstance(current, ml_collections.ConfigDict) or (
            isinstance(field_type, type) and issubclass(field_type, ml_collections.ConfigDict)
        ):
            subkeys = ", ".join(sorted(current.keys())) if isinstance(current, ml_collections.ConfigDict) else ""
            raise ConfigError(
                f"config key '{key}' is a group of settings and cannot be set to a value; "
                f"set one of its keys instead ({subkeys or 'it has no keys'})"
            )
        new_value = _parse_value(key, value, current, field_type)
        try:
            parent[leaf] = new_value
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"config key '{key}' cannot be set to {value!r}: {e}") from e
    return config


def _split_override(override: str) -> tuple[str, str]:
    if not isinstance(override, str):
        raise ConfigError(f"config override must be a 'key=value' string, got {override!r}")
    text = override[len(_PREFIX):] if override.startswith(_PREFIX) else override
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq:
        raise ConfigError(f"config override '{override}' has no '='; write it as 'key=VALUE'")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"config override '{override}' has an empty or malformed key '{key}'")
    return key, value


def _resolve_parent(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    """Walks ``a.b.c`` to (the ConfigDict holding c, 'c'); unknown keys raise with suggestions."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if part not in node:
            raise ConfigError(_unknown_key_message(config, key, node, prefix))
        if i == len(parts) - 1:
            return node, part
        child = node[part]
        if not isinstance(child, ml_collections.ConfigDict):
            here = ".".join(parts[: i + 1])
            raise ConfigError(
                f"config key '{here}' holds {_a(type(child).__name__)} value, not a group of "
                f"settings, so '{key}' does not exist"
            )
        node = child
    raise AssertionError("unreachable")  # pragma: no cover


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _unknown_key_message(config, key: str, node, prefix: str) -> str:
    paths = _all_paths(config)
    matches = _suggestions(key, paths)
    msg = f"unknown config key '{key}'"
    if matches:
        msg += "; did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"
    valid = sorted(node.keys())
    shown = ", ".join(valid[:_MAX_LISTED_KEYS])
    if len(valid) > _MAX_LISTED_KEYS:
        shown += f", ... ({len(valid) - _MAX_LISTED_KEYS} more)"
    where = f"under '{prefix}'" if prefix else "at the top level"
    msg += f" (valid keys {where}: {shown or 'none'})"
    return msg


def _suggestions(key: str, paths: Sequence[str]) -> list[str]:
    """Close dotted paths, best first: difflib matches within 0.1 of the best ratio, at most 3.

    Full paths share their group prefix, so plain get_close_matches also offers unrelated keys of
    the same group ('model.init' for 'model.widht'); keeping only near-best matches drops them.
    """
    matches = difflib.get_close_matches(key, paths, n=10, cutoff=0.6)
    if not matches:
        return []
    ratio = lambda m: difflib.SequenceMatcher(None, key, m).ratio()  # noqa: E731
    best = ratio(matches[0])
    return [m for m in matches if ratio(m) >= best - 0.1][:3]


def _all_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key path, groups and leaves."""
    out = []
    for k in config.keys():
        path = f"{prefix}{k}"
        out.append(path)
        v = config[k]
        if isinstance(v, ml_collections.ConfigDict):
            out.extend(_all_paths(v, path + "."))
    return out


# ---- Value parsing ------------------------------------------------------------------------------


class _BadValue(Exception):
    """Internal: the text does not parse as the wanted type."""


def _parse_value(key: str, text: str, current: Any, field_type: Any) -> Any:
    if text == "None":
        return None
    # Placeholders and None-valued fields: field_type tells what a placeholder expects.
    if current is None:
        if field_type is None or field_type is type(None) or not isinstance(field_type, type):
            return _literal_or_str(text)
        kind = field_type
    else:
        kind = type(current)
    try:
        if kind is bool:
            return _parse_bool(text)
        if kind is int:
            return _parse_int(text)
        if kind is float:
            return _parse_float(text)
        if kind is str:
            return text
        if issubclass(kind, (tuple, list)):
            return _parse_sequence(text, current if current is not None else kind())
        # Anything else (dict, set, custom objects): accept a literal of the same type.
        value = _literal(text)
        if isinstance(value, kind):
            return value
        raise _BadValue()
    except _BadValue:
        raise ConfigError(
            f"config key '{key}' expects {_describe(kind, current)}, got {text!r}"
        ) from None


def _describe(kind: type, current: Any) -> str:
    if kind is bool:
        return "bool (true/false/1/0/yes/no)"
    if isinstance(current, (tuple, list)):
        elem = _element_type(current)
        what = kind.__name__
        if elem is not None and current:
            return f"a {what} of {elem.__name__} (comma separated, e.g. '{_example(elem)}')"
        return f"a {what} (comma separated or a Python literal)"
    return kind.__name__


def _example(elem: type) -> str:
    return {int: "1,2,3", float: "0.1,0.2", bool: "true,false", str: "a,b,c"}.get(elem, "...")


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise _BadValue()


def _parse_int(text: str) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        f = float(t)
    except ValueError:
        raise _BadValue() from None
    if math.isfinite(f) and f.is_integer():
        return int(f)  # '1e6' for a step count.
    raise _BadValue()


def _parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise _BadValue() from None


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _BadValue() from None


def _literal_or_str(text: str) -> Any:
    try:
        return _literal(text)
    except _BadValue:
        return text


def _element_type(seq: Sequence[Any]) -> type | None:
    types = {type(x) for x in seq}
    if len(types) == 1:
        (t,) = types
        return t
    if types == {int, float}:
        return float
    return None


def _parse_sequence(text: str, current: Sequence[Any]) -> Any:
    container = type(current)
    elem = _element_type(current)
    t = text.strip()
    items: list[Any] | None = None
    if elem not in (str, bool, int, float):
        # Nested or mixed values: a Python literal first, '((1, 2), (3, 4))', '(1, "a")'.
        try:
            lit = _literal(t)
        except _BadValue:
            lit = None
        if isinstance(lit, (tuple, list)):
            items = list(lit)
        elif lit is not None and not isinstance(lit, str) and "," not in t:
            items = [lit]  # A single element without brackets: '5'.
    if items is None:
        items = _split_elements(t)
    converted = [_convert_element(x, elem, current, i) for i, x in enumerate(items)]
    try:
        return container(converted)
    except TypeError:  # pragma: no cover - exotic sequence subclasses.
        return tuple(converted)


def _split_elements(t: str) -> list[str]:
    if len(t) >= 2 and (t[0], t[-1]) in (("(", ")"), ("[", "]")):
        t = t[1:-1].strip()
    if not t:
        return []
    parts = [p.strip() for p in t.split(",")]
    if parts and parts[-1] == "":
        parts = parts[:-1]  # Trailing comma: 'a,' is a one-element tuple.
    if any(p == "" for p in parts):
        raise _BadValue()
    return [_unquote(p) for p in parts]


def _unquote(p: str) -> str:
    if len(p) >= 2 and p[0] == p[-1] and p[0] in "'\"":
        return p[1:-1]
    return p


def _convert_element(x: Any, elem: type | None, current: Sequence[Any], i: int) -> Any:
    if elem is None:
        # Mixed or empty existing value: per position when it lines up, else free-form.
        if len(current) and i < len(current) and type(current[i]) in (int, float, bool, str):
            return _convert_element(x, type(current[i]), (), i)
        return _literal_or_str(x) if isinstance(x, str) else x
    if isinstance(x, str):
        if elem is str:
            return x
        if elem is bool:
            return _parse_bool(x)
        if elem is int:
            return _parse_int(x)
        if elem is float:
            return _parse_float(x)
        value = _literal(x)
    else:
        value = x
    if elem is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if elem is str:
        return str(value)
    if elem is int and isinstance(value, bool):
        raise _BadValue()
    if isinstance(value, elem):
        return value
    if issubclass(elem, (tuple, list)) and isinstance(value, (tuple, list)):
        return elem(value)
    raise _BadValue()


# ----------------------------------------------------------------------------------------------
# Flatten / JSON
# ----------------------------------------------------------------------------------------------


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """Dotted key -> leaf value (sorted by key). An empty group maps to ``{}``."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        keys = sorted(node.keys())
        if not keys and prefix:
            out[prefix[:-1]] = {}
        for k in keys:
            v = node[k]
            if isinstance(v, (ml_collections.ConfigDict, Mapping)):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(config, "")
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (ml_collections.ConfigDict, Mapping)):
        return {str(k): _jsonable(value[k]) for k in value.keys()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, ml_collections.FieldReference):  # pragma: no cover - resolved by ConfigDict.
        return _jsonable(value.get())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays.
    if callable(tolist):
        return _jsonable(tolist())
    # Not JSON (a function, a type, ...): keep a readable record rather than failing a run.
    return repr(value)


def to_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    """The config as JSON: keys sorted, indent 2, tuples as lists, others (functions...) as repr."""
    return json.dumps(_jsonable(config), sort_keys=True, indent=2)


def _tuplify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def config_from_json(text: str, *, lists_as_tuples: bool = True) -> ml_collections.ConfigDict:
    """Re-creates a ConfigDict from `to_json` output (e.g. a run's saved config.json).

    JSON lists become tuples unless ``lists_as_tuples=False``. The result is not locked. Placeholder
    types and FieldReference links are not part of JSON and are not restored.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config JSON is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config JSON must hold an object at the top level, got {type(data).__name__}")
    if lists_as_tuples:
        data = _tuplify(data)
    return ml_collections.ConfigDict(data)
