"""`residual-audio export <dataset> <method>`: refit one method on every labelled clip of a dataset
and write it to one code-free file (`bundle`) that `predict` applies to new audio.

The refit uses the dataset's heads store and text side, as `train` does, with one split instead of
the folds. Every clip is a fitting clip, except for methods that choose an epoch or a
hyper-parameter on validation clips (`needs` has "validation"). For those, a stratified
`cv.val_fraction` share of the clips (seeded with `seed`) is the validation draw, as inside each
fold. The file records how many clips of each class went to each side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.environment import environment
from ..core.params import ParamError, check_dataset, get
from ..data.mel import open_mel_store
from ..data.paths import MEL_DIR
from ..evaluation.protocol import Split, validation_split
from ..evaluation.tasks import task_of
from ..methods import REGISTRY, FoldData, build
from ..stages.common import VALIDATION, _store
from .bundle import write_bundle

EXPORT_DIR = Path("exports")


def exportable() -> list[str]:
    return sorted(name for name, cls in REGISTRY.items() if cls.exportable)


def export(params: dict, dataset: str, method: str, out: str | Path | None = None):
    """Refit `method` on `dataset` and write the bundle; returns (its path, the fitted estimator)."""
    check_dataset(params, dataset)
    if method not in REGISTRY:
        raise ParamError(f"export: unknown method {method!r}; exportable: {', '.join(exportable())}")
    if not REGISTRY[method].exportable:
        raise ParamError(f"export: {method} cannot be exported (it needs more than the stored units to predict); "
                         f"exportable: {', '.join(exportable())}")
    out = Path(out) if out is not None else EXPORT_DIR / f"{dataset}-{method}.safetensors"
    store = _store(dataset)
    text = task_of(dataset).text_side(dataset, store)
    mel = open_mel_store(MEL_DIR / f"{dataset}.zarr")
    est = build(method, params)
    seed, fraction = get(params, "seed"), get(params, "cv.val_fraction")
    every = np.arange(store.n)
    if VALIDATION in est.needs:
        fit, val = validation_split(every, store.label, fraction, seed)
    else:
        fit, val = every, np.array([], np.int64)
    split = Split("all", np.sort(fit), np.sort(val), np.array([], np.int64))
    est.fit(FoldData(store, text, split, seed=seed, context={"pca": {}}))
    attrs = store.attrs
    counts = lambda idx: {c: int((store.label[idx] == i).sum()) for i, c in enumerate(store.classes)}  # noqa: E731
    meta = {
        "method": method, "hyper": est.get_params(), "dataset": dataset, "classes": list(store.classes),
        "family": attrs.get("family", "laion"), "variant": attrs.get("variant") or store.variant,
        "checkpoint": store.checkpoint_sha256 or "random", "weights": store.weights,
        "unit_names": list(store.unit_names),
        "front_end": {"mel_sha256": attrs.get("mel_sha256"), "crop": mel.attrs.get("crop", "start"),
                      "loader": mel.attrs.get("front_end", "exact"), "min_seconds": get(params, "preprocess.min_seconds")},
        "refit": {"fitting_clips": counts(split.train), "validation_clips": counts(split.val), "seed": seed,
                  "val_fraction": fraction if len(split.val) else 0.0},
        "environment": environment("cpu", checkpoint_sha256=store.checkpoint_sha256),
    }
    return write_bundle(out, meta, est.state(), text), est
