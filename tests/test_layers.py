"""The package's layers, read from its imports: every import points down, no cycles.

From the top: ``cli`` → ``experiments`` → ``evaluate``/``infer``/``train`` → ``data``/
``models``/``report`` → ``io`` → the ground modules (``config``, ``files``, ``credits``,
``errors``, ``hardware``, ``sample``, and ``weights/``, the shipped model's files, no code).
Inside a layer the packages do not import each other,
except ``evaluate`` → ``infer`` (evaluation runs the inference it measures) and ``services``
→ ``infer`` (the hospital services run it); inference, evaluation and services never import
training. Imports inside functions count (they are still
dependencies); imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {
    "ground": 0,
    "io": 1,
    "data": 2,
    "models": 2,
    "report": 2,
    "evaluate": 3,
    "infer": 3,
    "train": 3,
    "services": 3,
    "experiments": 4,
    "cli": 5,
}
GROUND = {"config", "files", "credits", "errors", "hardware", "sample", "weights"}
SAME_LAYER_ALLOWED = {("evaluate", "infer"), ("services", "infer")}
NEVER = {("infer", "train"), ("evaluate", "train"), ("services", "train")}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in (SRC / "ichseg").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            name = t.id if isinstance(t, ast.Name) else (t.attr if isinstance(t, ast.Attribute) else None)
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported ichseg module, line)], resolved to the deepest known module."""
    out: dict[str, list[tuple[str, int]]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found: list[tuple[str, int]] = []
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "ichseg"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.split(".")[0] != "ichseg":
                    continue
                for a in node.names:
                    sub = f"{name}.{a.name}"
                    found.append((sub if sub in mods else name, node.lineno))
        out[mod] = list(dict.fromkeys((m, line) for m, line in found if m in mods and m != mod))
    return out


def unit(mod: str) -> str:
    """The layer unit a module belongs to: its first package under ichseg, or 'ground'."""
    parts = mod.split(".")
    if len(parts) == 1 or parts[1] in GROUND:
        return "ground"
    return parts[1]


def violations(graph: dict[str, list[tuple[str, int]]], mods: dict[str, Path], root: Path = SRC) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        src = unit(mod)
        for dep, line in deps:
            dst = unit(dep)
            where = f"{mods[mod].relative_to(root)}:{line} imports {dep}"
            if src not in LAYERS or dst not in LAYERS:
                bad.append(f"{where}: {src if src not in LAYERS else dst!r} has no layer (add it to LAYERS)")
            elif (src, dst) in NEVER:
                bad.append(f"{where}: {src} must never import {dst}")
            elif LAYERS[dst] > LAYERS[src]:
                bad.append(f"{where}: upward ({src}, layer {LAYERS[src]} -> {dst}, layer {LAYERS[dst]})")
            elif LAYERS[dst] == LAYERS[src] and src != dst and src != "ground" and (src, dst) not in SAME_LAYER_ALLOWED:
                bad.append(f"{where}: sideways ({src} -> {dst} in layer {LAYERS[src]})")
    return bad


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_points_down_and_there_is_no_cycle() -> None:
    mods = _modules()
    graph = imports(mods)
    problems = violations(graph, mods) + [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("io", "from ichseg.experiments.workflow import prepare\n", "upward"),
        ("io", "from ichseg.data.ctich import SUBTYPES\n", "upward"),
        ("models", "from ichseg.data.ctich import SUBTYPES\n", "sideways"),
        ("infer", "from ichseg.train.loop import train_model\n", "never"),
        ("evaluate", "from ichseg.infer.pipeline import load_bundle\n", None),
        ("io", "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ichseg.cli import main\n", None),
    ],
)
def test_the_checker_names_the_file_and_line(tmp_path: Path, package: str, source: str, expected: str | None) -> None:
    mods = _modules()
    fake = tmp_path / "ichseg" / package / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import os\n" + source)
    name = f"ichseg.{package}.bad"
    graph = {name: imports({**mods, name: fake})[name]}
    found = violations(graph, {**mods, name: fake}, root=tmp_path)
    if expected is None:
        assert not found
    else:
        assert len(found) == 1 and f"ichseg/{package}/bad.py:2 imports" in found[0] and expected in found[0], found


def test_a_cycle_is_reported() -> None:
    graph = {"ichseg.a": [("ichseg.b", 1)], "ichseg.b": [("ichseg.c", 2)], "ichseg.c": [("ichseg.a", 3)], "ichseg.d": []}
    assert cycles(graph) == [["ichseg.a", "ichseg.b", "ichseg.c"]]


def test_a_long_module_says_why_in_its_docstring() -> None:
    long = []
    for path in sorted(_modules().values()):
        text = path.read_text()
        if text.count("\n") > 400 and "Why it is long:" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines and no 'Why it is long:' in its docstring")
    assert not long, "\n".join(long)


def test_the_readme_names_every_package_and_module() -> None:
    """README's "How the code is laid out" names each package (``name/``) and module (``name``)."""
    readme = (SRC.parent / "README.md").read_text()
    section = readme.split("### How the code is laid out", 1)[1].split("\n## ", 1)[0]
    missing = []
    for mod, path in sorted(_modules().items()):
        if mod == "ichseg":
            continue
        name = mod.rpartition(".")[2]
        spelled = f"`{name}/`" if path.name == "__init__.py" else f"`{name}`"
        if spelled not in section:
            missing.append(f"{path.relative_to(SRC)} ({spelled})")
    assert not missing, "README's layout paragraph does not name: " + ", ".join(missing)
