"""The pipeline's stages as data: name, whether it runs per dataset, the params.yaml keys its results
depend on (dvc.yaml's `params`, kept equal by tests/test_stage_deps.py) and a one-line summary;
and the help texts made from them. The stages' code is in `residual_audio.stages`; each
`stages/<name>.py` imports its stage's function directly and runs it through `core.runner`."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from .params import get, given


@dataclass(frozen=True)
class Stage:
    name: str
    per_dataset: bool
    params: tuple  # the params.yaml keys its results depend on (dvc.yaml's list; ${item} = the dataset).
    # Per-dataset stages also check their argument against `datasets` but do not depend on the
    # list: adding a dataset re-runs none of the others' stages.
    summary: str


STAGES = {s.name: s for s in (
    Stage("model", False, ("model.checkpoint", "model.checkpoint_sha256", "model.tokenizer"),
          "fetch the checkpoint and the tokenizer files into data/models/ (nothing for model.checkpoint: random)"),
    Stage("download", True, ("data.${item}", "download"),
          "fetch a dataset's clips into data/raw/<dataset>/"),
    Stage("preprocess", True,
          ("seed", "data.${item}", "model.variant", "preprocess"),
          "decode, resample to the model's rate, log-mel -> data/mel/<dataset>.zarr and .csv"),
    Stage("extract", True, ("model.checkpoint", "model.variant", "extract"),
          "one hooked forward per batch -> data/heads/<dataset>.zarr (per-head tensors, direct decomposition)"),
    Stage("text", True,
          ("model.checkpoint", "model.variant", "model.tokenizer", "zeroshot"),
          "zero-shot class vectors, temperature and frozen projection -> data/text/<dataset>.npz"),
    Stage("train", True,
          ("seed", "methods", "inject_layers", "cv", "residual", "train", "baselines", "probe",
           "tip_adapter", "prompt_learning", "model.variant", "live", "tuning"),
          "every method of `methods` fitted per fold -> data/results/<dataset>/<method>.npz"),
    Stage("evaluate", True, ("methods",),
          "metrics, per-fold tables, confusion and λ plots of one dataset -> metrics/<dataset>/, plots/alignment/<dataset>/"),
    Stage("compare", False, ("datasets",),
          "method × dataset table from every dataset's results -> metrics/comparison.md, plots/comparison.csv"),
    Stage("ablation", True, ("seed", "cv", "ablation", "model.variant"),
          "mean (and optionally total-effect) ablation of every head -> plots/ablation/<dataset>.csv"),
    Stage("fewshot", True,
          ("seed", "cv.scheme", "cv.k", "cv.val_fraction", "inject_layers", "fewshot", "tip_adapter", "prompt_learning",
           "model.variant", "train", "baselines", "probe", "residual", "tuning"),
          "few-shot curves of `fewshot.methods` -> metrics/<dataset>/fewshot.json, plots/fewshot/<dataset>/"),
    Stage("geometry", False, ("datasets", "geometry"),
          "intrinsic dimension and statistics of every head -> plots/geometry/, metrics/geometry.json"),
)}


WIDTH = 100  # help texts wrap here


def _wrap(text: str, indent: str = "", first: str | None = None) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent if first is None else first, subsequent_indent=indent,
                         break_on_hyphens=False) or [indent]


def _leaves(key: str) -> list[str]:
    """The schema's leaf keys at or under `key` (a `{a|b}` segment filled with the names the key gives)."""
    from .schema import SCHEMA, _expand

    keys = [full for pattern in SCHEMA for full in _expand(pattern) if full == key or full.startswith(key + ".")]
    parents = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))  # each recipe's fields together
    return sorted(keys, key=lambda k: parents.index(k.rsplit(".", 1)[0]))


def _param_lines(stage: Stage, params: dict | None) -> list[str]:
    """Per key: its current value and its meaning from the schema (wrapped at WIDTH); `${item}` keys
    once per listed dataset."""
    from .schema import SCHEMA, _leaf

    datasets = None
    if params is not None:
        listed = given(params, "datasets")
        datasets = [d for d in listed if isinstance(d, str)] if isinstance(listed, list) else None
    lines = []
    for pattern in stage.params:
        keys = [pattern.replace("${item}", d) for d in datasets] if "${item}" in pattern and datasets else [pattern]
        for key in keys:
            for leaf in [key] if "${item}" in key else _leaves(key) or [key]:  # ${item}: no datasets listed
                found = _leaf(leaf)
                meaning = SCHEMA[found[0]]["help"] if found else ""
                if params is None or "${item}" in leaf:
                    value = "(see params.yaml)"
                else:
                    missing = object()
                    value = given(params, leaf, missing)
                    value = f"{get(params, leaf)!r} (the default)" if value is missing else repr(value)
                lines += _wrap(f"{leaf} = {value}   {meaning}", " " * 6, first="  ")
    return lines


def stage_help(stage: Stage, params: dict | None = None) -> str:
    usage = f"python stages/{stage.name}.py" + (" <dataset>" if stage.per_dataset else "")
    text = [f"usage: {usage}   (or: residual-audio {stage.name}{' <dataset>' if stage.per_dataset else ''})", ""]
    text += _wrap(f"{stage.name}: {stage.summary}") + [""]
    if stage.per_dataset:
        text += _wrap("<dataset> is one of the names in `datasets` (dvc.yaml runs one copy per dataset: "
                      f"{stage.name}@<dataset>).") + [""]
    text += ["params.yaml keys it reads (current values):"] + _param_lines(stage, params)
    return "\n".join(text)


def overview() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: residual-audio <stage> [<dataset>] [--help]", ""]
    lines += _wrap("Stages of the DVC pipeline (dvc.yaml runs them; run one by hand with the same command):") + [""]
    for s in STAGES.values():
        head = f"  {s.name:<{width}}  {'per dataset ' if s.per_dataset else 'all datasets'} "
        lines += _wrap(s.summary, " " * len(head), first=head)
    lines += ["", "`residual-audio <stage> --help` lists the params.yaml keys a stage reads."]
    return "\n".join(lines)
