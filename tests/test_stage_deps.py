"""Every DVC stage lists, in its `deps` and `params`, exactly the project modules it imports and
the params keys it reads, measured by running it.

A module or key missing from a stage's lists lets DVC keep stale results when that code or value
changes; one listed but unused re-runs the stage for nothing. The README's offline example
(tests/example_run.py) runs every stage with RESIDUAL_AUDIO_TRACE set, and each run records
`sys.modules` (the method registry's imports included) and every key its own code read
through the params mapping (after the whole-file schema check; see `residual_audio.trace`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "residual_audio"


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_has_an_entry_in_the_stage_table():
    from residual_audio.core.pipeline import STAGES

    assert set(_stages()) == set(STAGES)
    for name in STAGES:
        assert (REPO / "stages" / f"{name}.py").is_file()


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_params_match_the_stage_table(name):
    """`residual-audio <stage> --help` lists what dvc.yaml tracks for it."""
    from residual_audio.core.pipeline import STAGES

    spec = _stages()[name]
    spec = spec.get("do", spec)
    listed = [str(p) for p in spec.get("params", [])]
    assert listed == list(STAGES[name].params)


# --------------------------------------------------------------------------- run-time deps
# The README's offline example runs every stage with RESIDUAL_AUDIO_TRACE set; each run records
# the package modules it imported (the method registry's included) and the params keys its own
# code read (after the whole-file schema check). dvc.yaml must list exactly those.

# stages that build the methods named in a params list: they depend on every registered method's
# params (the list can name any of them), read here by each method's `from_params`
METHOD_STAGES = {"train": "methods", "fewshot": "fewshot.methods"}


def _leaves(tree, prefix=""):
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def _covers(key: str, other: str) -> bool:
    """`key` is `other` or one of its ancestors."""
    return other == key or other.startswith(key + ".")


def method_reads() -> set[str]:
    """Every params key some registered method's `from_params` reads (default params.yaml)."""
    from residual_audio.core.params import load_params
    from residual_audio.core.trace import ReadRecorder
    from residual_audio.methods import REGISTRY, available

    reads: set[str] = set()
    for name in available():
        REGISTRY[name].from_params(ReadRecorder(load_params(REPO / "params.yaml"), reads))
    return reads


@pytest.fixture(scope="module")
def traces(offline_example):
    import json

    found = {p.stem: json.loads(p.read_text()) for p in offline_example.trace.glob("*.json")}
    assert found, "no stage recorded a trace"
    return found


def _trace_of(traces: dict, name: str) -> tuple[str, dict]:
    labels = [label for label in traces if label.split("@")[0] == name]
    assert labels, f"the offline example did not run stage {name!r}"
    return labels[0], traces[labels[0]]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_are_exactly_the_modules_it_imports_at_run_time(traces, name):
    spec = _stages()[name]
    spec = spec.get("do", spec)
    _, trace = _trace_of(traces, name)
    used = {m for m in trace["modules"] if not m.endswith("__init__.py") or (REPO / m).stat().st_size}
    used.discard(f"{PACKAGE}/core/trace.py")  # imported only to record this trace
    used.add(f"stages/{name}.py")
    listed = {str(d) for d in spec.get("deps", []) if str(d).endswith(".py")}
    assert not used - listed, f"dvc.yaml stage {name!r} does not list {sorted(used - listed)} in its deps"
    assert not listed - used, f"dvc.yaml stage {name!r} lists {sorted(listed - used)}, which it never imports"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_params_are_exactly_the_keys_it_reads_at_run_time(traces, name):
    from residual_audio.core.params import given, load_params

    spec = _stages()[name]
    spec = spec.get("do", spec)
    label, trace = _trace_of(traces, name)
    dataset = label.split("@")[1] if "@" in label else None
    listed = [str(p).replace("${item}", dataset or "${item}") for p in spec.get("params", [])]
    reads = set(trace["params"]) | (method_reads() if name in METHOD_STAGES else set())
    missing = sorted(r for r in reads if not any(_covers(key, r) for key in listed))
    assert not missing, f"dvc.yaml stage {name!r} reads {missing} but does not list them in its params"
    params = load_params(REPO / "params.yaml")
    if dataset:
        params.setdefault("data", {}).setdefault(dataset, given(params, f"data.{dataset}", {}))
    unused = sorted({f"{key} ({leaf})" for key in listed for leaf in _leaves(given(params, key, {}), key + ".")
                     if not any(_covers(r, leaf) or _covers(leaf, r) for r in reads)})
    assert not unused, f"dvc.yaml stage {name!r} lists params it never reads: {unused}"


@pytest.mark.slow
def test_editing_tip_adapter_or_its_params_makes_train_stale(offline_example):
    """The method registry's modules and params reach DVC: after the example's run, an edit to the
    module that defines Tip-Adapter, or to `tip_adapter.alpha`, is a changed dep of `train`."""
    import json

    from residual_audio.methods.tip_adapter import TipAdapter

    work = offline_example.work
    module = work / Path(TipAdapter.__module__.replace(".", "/") + ".py")
    params = work / "params.yaml"
    saved = {p: p.read_text() for p in (module, params)}

    def train_changes() -> dict:
        out = json.loads(offline_example.sh(". .venv/bin/activate && dvc status --json"))
        return {k: v for entry in out.get("train@esc50", []) for k, v in entry.get("changed deps", {}).items()}

    assert train_changes() == {}
    try:
        module.write_text(saved[module] + "\n# an edit\n")
        assert str(module.relative_to(work)) in train_changes()
        module.write_text(saved[module])
        config = yaml.safe_load(saved[params])
        config["tip_adapter"]["alpha"] = [*config["tip_adapter"]["alpha"], 123.0]
        params.write_text(yaml.safe_dump(config, sort_keys=False))
        assert any(_covers(key, "tip_adapter.alpha") for key in train_changes().get("params.yaml", {}))
    finally:
        for path, text in saved.items():
            path.write_text(text)
