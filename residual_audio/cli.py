"""The pipeline's stages by name, and one command line to list, explain and run them.

`python -m residual_audio` (or `residual-audio`) lists the stages; `residual-audio <stage>
--help` prints what a stage reads, writes and which params it uses, touching nothing;
`residual-audio <stage> [<dataset>]` runs it exactly as `dvc repro` does (DVC calls
`python stages/<stage>.py`, the same entry). Per-dataset stages take the dataset name,
one of `datasets` in params.yaml.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function" in this package; called as f(params) or f(params, dataset)
    per_dataset: bool
    params: tuple  # the params.yaml keys its results depend on (dvc.yaml's list; ${item} = the dataset).
    # Per-dataset stages also check their argument against `datasets` but do not depend on the
    # list: adding a dataset re-runs none of the others' stages.
    summary: str


STAGES = {s.name: s for s in (
    Stage("model", "download:run_model", False, ("model.checkpoint", "model.checkpoint_sha256", "model.tokenizer"),
          "fetch the checkpoint and the tokenizer files into data/models/ (nothing for model.checkpoint: random)"),
    Stage("download", "download:run_dataset", True, ("data.${item}", "download"),
          "fetch a dataset's clips into data/raw/<dataset>/"),
    Stage("preprocess", "preprocess:run", True,
          ("seed", "data.${item}", "model.variant", "preprocess"),
          "decode, resample to 48 kHz, log-mel -> data/mel/<dataset>.zarr and .csv"),
    Stage("extract", "extract:run", True, ("model.checkpoint", "model.variant", "extract"),
          "one hooked forward per batch -> data/heads/<dataset>.zarr (per-head tensors, direct decomposition)"),
    Stage("text", "experiment:text_stage", True,
          ("model.checkpoint", "model.variant", "model.tokenizer", "zeroshot"),
          "zero-shot class vectors, temperature and frozen projection -> data/text/<dataset>.npz"),
    Stage("train", "experiment:train_stage", True,
          ("seed", "methods", "inject_layers", "cv", "residual", "train", "baselines", "probe",
           "tip_adapter", "prompt_learning", "model.variant", "live"),
          "every method of `methods` fitted per fold -> data/results/<dataset>/<method>.npz"),
    Stage("evaluate", "report:evaluate_stage", True, ("methods",),
          "metrics, per-fold tables, confusion and λ plots of one dataset -> metrics/<dataset>/, plots/alignment/<dataset>/"),
    Stage("compare", "report:compare_stage", False, ("datasets",),
          "method × dataset table from every dataset's results -> metrics/comparison.md, plots/comparison.csv"),
    Stage("ablation", "experiment:ablation_stage", True, ("seed", "cv", "ablation", "model.variant"),
          "mean (and optionally total-effect) ablation of every head -> plots/ablation/<dataset>.csv"),
    Stage("fewshot", "fewshot:fewshot_stage", True,
          ("seed", "cv.scheme", "cv.k", "inject_layers", "fewshot", "tip_adapter", "prompt_learning", "model.variant",
           "train", "baselines", "probe", "residual"),
          "few-shot curves of `fewshot.methods` -> metrics/<dataset>/fewshot.json, plots/fewshot/<dataset>/"),
    Stage("geometry", "geometry:stage", False, ("datasets", "geometry"),
          "intrinsic dimension and statistics of every head -> plots/geometry/, metrics/geometry.json"),
)}


def resolve(stage: Stage):
    module, function = stage.target.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def _param_lines(stage: Stage, params: dict | None) -> list[str]:
    from .params import get

    lines = []
    for key in stage.params:
        value = "(see params.yaml)"
        if params is not None and "${item}" not in key:
            missing = object()
            found = get(params, key, missing)
            value = "(not set)" if found is missing else repr(found)
        lines.append(f"  {key:<28} {value}")
    return lines


def stage_help(stage: Stage, params: dict | None = None) -> str:
    usage = f"python stages/{stage.name}.py" + (" <dataset>" if stage.per_dataset else "")
    text = [f"usage: {usage}   (or: residual-audio {stage.name}{' <dataset>' if stage.per_dataset else ''})", "",
            f"{stage.name}: {stage.summary}", ""]
    if stage.per_dataset:
        text += ["<dataset> is one of the names in `datasets` (dvc.yaml runs one copy per dataset: "
                 f"{stage.name}@<dataset>).", ""]
    text += ["params.yaml keys it reads (current values):"] + _param_lines(stage, params)
    return "\n".join(text)


def overview() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: residual-audio <stage> [<dataset>] [--help]", "",
             "Stages of the DVC pipeline (dvc.yaml runs them; run one by hand with the same command):", ""]
    lines += [f"  {s.name:<{width}}  {'per dataset  ' if s.per_dataset else 'all datasets '} {s.summary}"
              for s in STAGES.values()]
    lines += ["", "`residual-audio <stage> --help` lists the params.yaml keys a stage reads."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`residual-audio [<stage> [<dataset>]] [--help]`."""
    from .stage import run_stage

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        sys.exit(f"residual-audio: unknown stage {name!r}; stages: {', '.join(STAGES)}")
    run_stage(name, rest)


if __name__ == "__main__":
    main()
