"""The `train` stage: every method of `methods` fitted per fold on one dataset -> data/results/<dataset>/<method>.npz."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..core.io import atomic_path
from ..core.logs import progress
from ..core.params import get
from ..core.resume import Resume
from ..data.paths import RESULTS_DIR
from ..evaluation import results as al
from ..evaluation.live import TrainingLog
from ..evaluation.live import enabled as live_enabled
from ..evaluation.tasks import task_of
from ..methods import FoldData, build
from .common import AlignmentParams, _store, _weights, method_context, result_environment, resume_inputs


def run(params: dict, dataset: str) -> Path:
    """Every method of `methods` on every fold of `dataset` → data/results/<dataset>/<method>.npz."""
    return train_dataset(params, dataset)


def train_dataset(params: dict, dataset: str) -> Path:
    """One loop over folds and methods for one dataset; every method is built (its params checked)
    before any work, and the results directory is replaced atomically at the end."""
    p = AlignmentParams.read(params, dataset)
    estimators = {m: build(m, params) for m in p.methods}  # unknown names and bad hyper-parameters fail here
    store = _store(dataset)
    task = task_of(dataset)
    text = task.text_side(dataset, store)
    splits = task.splits(store, p)
    context = method_context(estimators.values(), params, text, dataset, store)  # before any method runs
    weights = _weights(store, text)
    if context.get("weights") == "random":
        weights = "random"
    results = {m: [] for m in p.methods}
    live = TrainingLog(dataset, live_enabled(params), weights=weights)
    resume = Resume("train", dataset, {**resume_inputs(store, text, context), "weights": weights})
    bar = progress(total=len(splits) * len(p.methods), desc=f"train {dataset}", unit="fits", boundary=True)
    for i, split in enumerate(splits):
        context["pca"] = {}  # per-fold PCA cache shared by the recipes
        data = FoldData(store, text, split, seed=p.seed + i, context=context)
        for m in p.methods:
            bar.set_postfix_str(f"{split.name} ({i + 1}/{len(splits)}): {m}")
            unit = {"method": m, "hyper": estimators[m].get_params(), "fold": split.name, "seed": p.seed + i,
                    "train": split.train, "val": split.val, "test": split.test}
            cached = resume.get(unit)
            if cached is not None:  # finished by an earlier run that was stopped
                result = al.fold_from_arrays(*cached)
            else:
                est = build(m, params).fit(data)
                logits = est.logits(data, split.test)
                extra = dict(est.artefacts())
                extra.update(train=split.train, val=split.val)
                if hasattr(est, "chosen"):
                    extra["chosen"] = est.chosen()
                result = al.FoldResult(m, split.name, split.test, np.asarray(logits, np.float32), int(est.n_params_),
                                       list(getattr(est, "history_", [])), extra)
                resume.put(unit, *al.fold_arrays(result))
            bar.update(1)
            for row in result.history:  # the kept run's curve, as soon as the fold is fitted
                if "epoch" in row:
                    live.log(m, split.name, row)
            results[m].append(result)
    bar.close()
    live.close()
    if resume.reused:
        print(f"train {dataset}: {resume.reused} of {len(splits) * len(p.methods)} fits reused from an unfinished run "
             f"({resume.dir})", file=sys.stderr)
    out = RESULTS_DIR / dataset
    tuning = get(params, "tuning.mode")
    env = result_environment(store, str(context.get("device", "cpu")))  # methods on embeddings run on the CPU
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for m, res in results.items():
            meta = {"inject_layers": sorted(p.inject_layers), "seed": p.seed, "cv": {"scheme": p.scheme, "k": p.k,
                    "val_fraction": p.val_fraction}, "tuning": tuning, "environment": env}
            al.save_method_results(tmp / f"{m}.npz", m, res, store.label, store.classes, weights,
                                   estimators[m].get_params(), meta)
    resume.finish()
    return out
