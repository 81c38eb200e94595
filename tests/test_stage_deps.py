"""Every DVC stage lists, in its `deps`, each project module its entry point imports, transitively.

The closure counts every import statement of a module, those inside functions included, plus
the module that runs the stage's logic (named in `residual_audio.cli.STAGES`). A project
module missing from a stage's deps would let DVC keep stale results when that code changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "residual_audio"


def _imports(path: Path) -> set[str]:
    """Project modules (file paths relative to the repo) imported anywhere in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package_parts = list(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            for candidate in (REPO / Path(*name.split("."))).with_suffix(".py"), REPO / Path(*name.split(".")) / "__init__.py":
                if candidate.is_file():
                    found.add(str(candidate.relative_to(REPO)))
    return found


def closure(*paths: str) -> set[str]:
    todo, seen = list(paths), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += sorted(_imports(REPO / path) - seen)
    return seen


def stage_closure(name: str) -> set[str]:
    from residual_audio.cli import STAGES

    target = f"{PACKAGE}/{STAGES[name].target.split(':')[0]}.py"
    return closure(f"stages/{name}.py", target, f"{PACKAGE}/__init__.py")


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_has_an_entry_in_the_stage_table():
    from residual_audio.cli import STAGES

    assert set(_stages()) == set(STAGES)
    for name in STAGES:
        assert (REPO / "stages" / f"{name}.py").is_file()


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_the_modules_it_imports(name):
    spec = _stages()[name]
    spec = spec.get("do", spec)
    deps = {str(d) for d in spec.get("deps", [])}
    needed = {p for p in stage_closure(name) if not p.endswith("__init__.py") or (REPO / p).stat().st_size}
    missing = sorted(p for p in needed if p not in deps and not any(p.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {name!r} does not list {missing} in its deps"


def test_closure_follows_imports_inside_functions(tmp_path):
    """The scanner itself: an import inside a function body is found (text_stage imports clap there)."""
    assert f"{PACKAGE}/clap.py" in closure(f"{PACKAGE}/experiment.py")
    assert f"{PACKAGE}/params.py" in _imports(REPO / PACKAGE / "stage.py")


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_params_match_the_stage_table(name):
    """`residual-audio <stage> --help` lists what dvc.yaml tracks for it."""
    from residual_audio.cli import STAGES

    spec = _stages()[name]
    spec = spec.get("do", spec)
    listed = [str(p) for p in spec.get("params", [])]
    assert listed == list(STAGES[name].params)
