"""The package's layout: no import cycle, one module per stage with one entry point, each
`stages/<name>.py` importing its stage module directly, and a method registry filled by static
imports. Imports are read from the source (those inside functions included), so a cycle hidden
behind a late import is found too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "residual_audio"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((REPO / PACKAGE).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Package modules that `path` imports anywhere (`from . import x` counts as module x)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_the_package_is_split_into_named_parts():
    top = {p.name for p in (REPO / PACKAGE).iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert top == {"core", "models", "data", "methods", "evaluation", "analysis", "stages", "adapted"}
    loose = {p.name for p in (REPO / PACKAGE).glob("*.py")}
    assert loose == {"__init__.py", "__main__.py", "cli.py"}


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "stages").glob("*.py")))
def test_each_stage_has_one_module_with_one_entry_point(name):
    from residual_audio.core.pipeline import STAGES

    assert name in STAGES
    script = (REPO / "stages" / f"{name}.py").read_text()
    assert f"from residual_audio.stages import {name}" in script and f'main("{name}", {name}.run)' in script
    tree = ast.parse((REPO / PACKAGE / "stages" / f"{name}.py").read_text())
    assert "run" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_no_string_imports_in_the_package():
    for path in modules().values():
        text = path.read_text()
        assert "import_module" not in text and "__import__" not in text, path


def test_the_method_registry_is_filled_by_the_packages_static_imports():
    from residual_audio.methods import REGISTRY

    init = (REPO / PACKAGE / "methods" / "__init__.py").read_text()
    for cls in REGISTRY.values():
        leaf = cls.__module__.rsplit(".", 1)[1]
        assert leaf in init, f"{cls.__module__} is not imported by residual_audio/methods/__init__.py"


def test_stages_score_through_the_task_seam():
    """train, fewshot, ablation and evaluate draw folds, read the text side and score through the
    dataset's task (`evaluation.tasks.task_of`), so a second task plugs in without touching them."""
    import inspect

    from residual_audio.data.datasets import DATASETS
    from residual_audio.evaluation.tasks import TASKS
    from residual_audio.stages import ablation, evaluate, fewshot, train

    for module in (train, fewshot, ablation, evaluate):
        source = inspect.getsource(module)
        assert "task_of(" in source, module.__name__
        for direct in ("make_splits(", "load_text_side(", "argmax(1) =="):
            assert direct not in source, (module.__name__, direct)
    assert all(d.task in TASKS for d in DATASETS.values())


def test_stages_ask_the_model_family_seam_never_a_family():
    """The stages reach a model only through models.checkpoints: no stage imports models.hf or tests
    for a ClapModel folder itself."""
    import inspect

    from residual_audio.stages import (ablation, common, compare, download, evaluate, extract, fewshot, geometry,
                                       model, preprocess, text, train)

    for module in (ablation, common, compare, download, evaluate, extract, fewshot, geometry, model, preprocess, text,
                   train):
        source = inspect.getsource(module)
        assert "from ..models import hf" not in source and "is_folder(" not in source, module.__name__


def test_only_the_seam_imports_a_family_module():
    """Outside `models/`, nothing imports models.laion, models.hf or models.msclap: the family seam is the one door
    (the data layer's fetching and the CLI are the exceptions that place and describe checkpoints)."""
    import re

    root = Path(__file__).resolve().parents[1] / "residual_audio"
    for path in root.rglob("*.py"):
        part = path.relative_to(root).parts[0]
        if part in ("models", "data", "cli.py", "__main__.py"):
            continue
        text = path.read_text()
        assert not re.search(r"from \.+models(\.laion|\.msclap| import (hf|laion|msclap))", text), path
