"""The house's shape: imports point one way (base <- model <- data <- dictionaries <- training <- analysis <- faces),
no cycle between parts, and a face that starts fast (`glasswork --help` imports no torch)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "glasswork"
# each part of the package (its first dotted name under glasswork) and its layer; a part may import its own layer
# or lower ones, never higher; the package's own __init__ (the lazy facade) is above everything
LAYERS = {
    "version": 0, "errors": 0, "io": 0, "progress": 0, "precision": 0, "allocator": 0,
    "models": 1, "hooks": 1,
    "data": 2,
    "dictionaries": 3,
    "training": 4,
    "evals": 5, "features": 5, "steering": 5, "directions": 5, "circuits": 5, "toy": 5, "scaling": 5, "refusal": 5, "suite": 5, "vision": 5,
    "cli": 6, "server": 6, "demo": 6,
    "__init__": 7,
}


def import_arrows(package: Path) -> list[tuple[str, str, str, int]]:
    """(file, from part, to part, line) for every import of the package by itself, lazy imports in functions too."""
    arrows = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        module = [package.name, *parts]
        if module[-1] == "__init__":
            module = module[:-1]
        here = module if path.name == "__init__.py" else module[:-1]  # the package relative imports start from
        source = module[1] if len(module) > 1 else "__init__"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                dotted = name.split(".")
                if dotted[0] != package.name:
                    continue
                target_part = dotted[1] if len(dotted) > 1 and dotted[1] in LAYERS else "__init__"
                if target_part != source:
                    arrows.append((str(path.relative_to(package)), source, target_part, node.lineno))
    return arrows


def layout_problems(package: Path) -> list[str]:
    arrows = import_arrows(package)
    problems = [f"{f}:{line}: {a} (layer {LAYERS.get(a, '?')}) imports {b} (layer {LAYERS.get(b, '?')})"
                for f, a, b, line in arrows if a not in LAYERS or LAYERS.get(b, 99) > LAYERS[a]]
    graph: dict[str, set[str]] = {}
    for _, a, b, _ in arrows:
        graph.setdefault(a, set()).add(b)

    def cycle_from(start, node, seen):  # depth-first: a path back to start is a cycle
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                rest = cycle_from(start, nxt, seen)
                if rest:
                    return [node, *rest]
        return None
    for part in sorted(graph):
        loop = cycle_from(part, part, {part})
        if loop:
            problems.append("cycle: " + " -> ".join(loop))
    return problems


def test_imports_point_one_way_and_make_no_cycle():
    assert layout_problems(PACKAGE) == []


def test_the_check_fails_on_an_upward_import_and_a_cycle(tmp_path):
    """The checker itself, on a copy of the package with a deliberately added upward import (data -> circuits) and a
    cycle (steering -> directions -> steering)."""
    import shutil
    copy = tmp_path / "glasswork"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    store = copy / "data" / "store.py"
    store.write_text(store.read_text() + "\n\ndef _up():\n    from ..circuits import attribute\n    return attribute\n")
    steering = copy / "steering.py"
    steering.write_text(steering.read_text() + "\n\ndef _loop():\n    from . import directions\n    return directions\n")
    problems = layout_problems(copy)
    assert any("data/store.py" in p and "imports circuits" in p for p in problems), problems
    assert any(p.startswith("cycle:") and "steering" in p and "directions" in p for p in problems), problems


def test_the_face_imports_no_torch():
    code = ("import sys, glasswork, glasswork.cli; heavy = [m for m in ('torch', 'transformers', 'fastapi', 'numpy') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _commands(group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        yield (*prefix, name)
        if hasattr(cmd, "commands"):  # a group of verbs
            yield from _commands(cmd, (*prefix, name))


def test_every_verb_has_help_that_renders():
    import typer
    from typer.testing import CliRunner

    from glasswork.cli import app
    verbs = list(_commands(typer.main.get_command(app)))
    assert {("train",), ("attribute",), ("features", "build"), ("import",), ("demo",)} <= set(verbs)
    for verb in [(), *verbs]:
        r = CliRunner().invoke(app, [*verb, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, (verb, r.output[-500:], r.exception)


def test_no_name_in_a_package_shadows_one_of_its_modules():
    """`import glasswork.x.y as m` gives the module y, never a function a package __init__ re-exports as y."""
    import importlib
    for init in sorted(PACKAGE.rglob("__init__.py")):
        folder = init.parent
        dotted = ".".join(("glasswork", *folder.relative_to(PACKAGE).parts))
        package = importlib.import_module(dotted)
        for path in sorted(folder.glob("*.py")):
            if path.stem in ("__init__", "__main__"):
                continue
            module = importlib.import_module(f"{dotted}.{path.stem}")
            assert getattr(package, path.stem) is module, f"{dotted}.{path.stem} is shadowed"
