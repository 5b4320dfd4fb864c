"""The import-layer contract of the package (a self-written check, no import-linter needed).

Every ``import`` in ``fastslow_jax/`` counts, at module level or inside a function: a function-level
import may delay loading a heavy library, never hide a cycle. The graph of the package's modules must
have no circle, and every edge must point down ``LAYERS`` (top first). Within a layer marked
independent, the listed parts (e.g. ``models`` and ``data``) must not import each other at all.
"""
from __future__ import annotations

import ast
import os


from tests.conftest import REPO

PACKAGE = "fastslow_jax"

# top to bottom: (independent?, module prefixes). A module belongs to the longest prefix it starts with.
LAYERS = [
    (False, ("fastslow_jax.cli",)),
    (False, ("fastslow_jax.serving",)),
    (False, ("fastslow_jax.workdir",)),  # what a (pipeline) workdir is: for eval, index, search, serve
    (False, ("fastslow_jax.train.loop",)),
    (False, ("fastslow_jax.train.run",)),  # Run, setup, load_trained, warm starts, the task registry
    (False, ("fastslow_jax.train.fast", "fastslow_jax.train.slow", "fastslow_jax.train.distill",
             "fastslow_jax.train.optim")),  # the tasks (distillation reuses Fast's InfoNCE)
    (False, ("fastslow_jax.retrieval",)),  # scorers and metrics: nothing of training
    (True, ("fastslow_jax.models", "fastslow_jax.data")),  # side by side
    (False, ("fastslow_jax.config", "fastslow_jax.parallel", "fastslow_jax.checkpoint", "fastslow_jax.preprocess",
             "fastslow_jax.assets")),  # shared primitives, preprocessing, packaged-asset lookup
]


def module_files(root: str) -> dict[str, str]:
    """{module name: file} for every .py file of the package under ``root``."""
    out = {}
    base = os.path.join(root, PACKAGE)
    for d, _, files in os.walk(base):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(d, f)
    return out


def import_graph(root: str) -> dict[str, set[tuple[str, int]]]:
    """{module: {(imported package module, line)}} over every import statement of every module."""
    modules = module_files(root)
    graph: dict[str, set[tuple[str, int]]] = {}
    for mod, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        edges = set()
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    parts = parts[:len(parts) - node.level + 1]
                    src = ".".join(parts + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                # "from a import b" imports module a.b when it exists, else names of module a
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in node.names]
            for t in targets:
                while t and t not in modules and "." in t:  # "import a.b.c" of a name: its module
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != mod:
                    edges.add((t, node.lineno))
        graph[mod] = edges
    return graph


def layer_of(mod: str) -> tuple[int, str] | None:
    """(layer index, the prefix it matched) of ``mod``; None for a package's own (empty) ``__init__``."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    return best


def find_cycle(graph) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        color[m] = 1
        stack.append(m)
        for t, _ in sorted(graph.get(m, ())):
            if color.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in color:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        color[m] = 2
        return None

    for m in sorted(graph):
        if m not in color:
            found = visit(m)
            if found:
                return found
    return None


def violations(root: str) -> list[str]:
    """Every broken rule of the contract, one sentence each (empty: the package keeps it)."""
    graph = import_graph(root)
    problems = []
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import circle: " + " -> ".join(cycle))
    for mod, edges in sorted(graph.items()):
        src = layer_of(mod)
        if src is None:
            if mod != PACKAGE and not module_files(root)[mod].endswith("__init__.py"):
                problems.append(f"{mod} is in no layer of tests/test_layers.py LAYERS; add it where it belongs")
            continue
        for target, line in sorted(edges):
            dst = layer_of(target)
            if dst is None:
                continue  # a package __init__ (they import nothing of ours)
            independent = LAYERS[src[0]][0]
            if dst[0] < src[0]:
                problems.append(f"{mod} (line {line}) imports {target}: an upward import "
                                f"(layer {src[1]} is below {dst[1]})")
            elif dst[0] == src[0] and independent and dst[1] != src[1]:
                problems.append(f"{mod} (line {line}) imports {target}: {src[1]} and {dst[1]} are independent")
    return problems


def test_every_package_module_is_in_a_layer_and_the_graph_has_no_circle_or_upward_edge():
    problems = violations(REPO)
    assert not problems, "the import-layer contract is broken:\n" + "\n".join(problems)


def test_the_contract_sees_a_function_level_upward_import_and_a_cycle(tmp_path):
    """The check itself: a data module that imports models inside a function, and a circle, both fail."""
    pkg = tmp_path / PACKAGE
    for sub in ("", "data", "models"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "config.py").write_text("")
    (pkg / "data" / "pipeline.py").write_text("def f():\n    from fastslow_jax.models import vision\n")
    (pkg / "models" / "vision.py").write_text("from fastslow_jax import config\n")
    got = violations(str(tmp_path))
    assert got == ["fastslow_jax.data.pipeline (line 2) imports fastslow_jax.models.vision: "
                   "fastslow_jax.data and fastslow_jax.models are independent"]
    (pkg / "config.py").write_text("import fastslow_jax.data.pipeline\n")
    got = violations(str(tmp_path))
    assert any(p.startswith("import circle: ") for p in got)
    assert any("fastslow_jax.config (line 1) imports fastslow_jax.data.pipeline: an upward import" in p for p in got)


if __name__ == "__main__":  # python -m tests.test_layers: print the contract's verdict on this checkout
    found = violations(REPO)
    print("\n".join(found) if found else "import-layer contract kept: no circle, no upward edge")
    raise SystemExit(1 if found else 0)
