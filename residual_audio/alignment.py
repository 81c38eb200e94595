"""What every method writes per dataset, and the scores computed from it.

`data/results/<dataset>/<method>.npz` (one layout for every method; see docs/methods.md):
the test logits of every clip from its own fold, and per fold everything it learned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path
from .params import ParamError
from .protocol import Split
from .residual import UnitBases
from .training import TrainConfig, evaluate, train, trainable_count
from .zeroshot import FrozenHead, TextSide, topk_correct

# the default `methods` list, in the order the comparison table shows them
# what `train` runs when params.yaml names no `methods`, and the order of every table
DEFAULT_METHODS = ("zeroshot", "linear_probe", "linear", "spectral_out", "residual_coarse", "residual_fine",
                   "residual_full", "residual_identity", "linear_adapter", "tip_adapter", "tip_adapter_f")
METHODS = DEFAULT_METHODS + ("prompt_learning", "residual_fine_unlabelled", "residual_inject")


@dataclass
class FoldResult:
    method: str
    fold: str
    test: np.ndarray  # store indices of the test clips
    logits: np.ndarray  # [n_test, C]
    params: int
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def run_inject_residual(cache: torch.Tensor, labels: np.ndarray, split: Split, text: TextSide, bases: UnitBases,
                        hooked, stages, cfg: TrainConfig, beyond: str = "keep") -> FoldResult:
    """Inject-mode ResiDual: λ on the heads of `stages`, trained through the frozen encoder's forward.

    `cache` [N, ...] holds, for every clip of the store, what the forward starts from (see
    `inject.entry_inputs`); evaluation passes use `train.batch_size` clips, like training.
    """
    from .inject import FromCache, InjectResiDual

    device = next(hooked.model.parameters()).device
    inner = InjectResiDual(hooked, FrozenHead(text), bases, stages, beyond).to(device)
    model = FromCache(inner, cache)
    cfg = replace(cfg, eval_batch=cfg.batch_size, batch_progress=True)
    idx = {k: (torch.from_numpy(np.asarray(v, dtype=np.int64)),) for k, v in
           (("train", split.train), ("val", split.val), ("test", split.test))}
    history, lr = train(model, idx["train"], labels[split.train], idx["val"], labels[split.val], cfg,
                        desc=f"residual {split.name}")
    _, _, logits = evaluate(model, idx["test"], torch.from_numpy(labels[split.test]), cfg.eval_batch)
    lam = inner.lam.detach().cpu().numpy().copy()
    return FoldResult("residual", split.name, split.test, logits.numpy(), trainable_count(model), history,
                      {"lam": lam, "owner": inner.bases.owner, "explained": inner.bases.explained, "lr": lr})


# --------------------------------------------------------------------------- results


def save_method_results(path: str | Path, method: str, results: list[FoldResult], labels: np.ndarray, classes,
                        weights: str, hyper: dict, meta: dict | None = None) -> None:
    """One method on one dataset: the test logits of every clip (from its own fold) and, per
    fold, its indices, test logits, trainable count, history, chosen hyper-parameters and artefacts."""
    folds = [r.fold for r in results]
    n_classes = len(classes)
    logits = np.full((len(labels), n_classes), np.nan, dtype=np.float32)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    arrays = {"method": np.array(method), "labels": labels, "classes": np.array(classes), "folds": np.array(folds),
              "weights": np.array(weights), "hyper": np.array(json.dumps(hyper, default=_jsonable)),
              "meta": np.array(json.dumps(meta or {}, default=_jsonable))}
    for i, r in enumerate(results):
        logits[r.test] = r.logits
        fold_of[r.test] = i
        f = r.fold
        arrays[f"{f}/test"], arrays[f"{f}/logits"] = np.asarray(r.test, np.int64), np.asarray(r.logits, np.float32)
        arrays[f"{f}/history"] = np.array(json.dumps(r.history, default=_jsonable))
        for k, v in r.extra.items():
            arrays[f"{f}/{k}"] = np.array(json.dumps(v, default=_jsonable)) if isinstance(v, dict) else np.asarray(v)
    arrays["logits"], arrays["fold_of"], arrays["params"] = logits, fold_of, np.array([r.params for r in results], np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _jsonable(v):
    import dataclasses

    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def load_results(path: str | Path) -> dict:
    """The arrays of a results file, with `hyper`, `meta` and every `<fold>/history`/`<fold>/chosen` decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: results not found (run the 'train' stage with this method in 'methods')")
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    for k in list(out):
        if k in ("hyper", "meta") or k.endswith(("/history", "/chosen", "/recipe")):
            out[k] = json.loads(str(out[k]))
    out["history"] = [dict(fold=str(f), **row) for f in out["folds"] for row in out[f"{f}/history"]]
    return out


def fold_scores(logits: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, n_folds: int) -> dict:
    """Top-1 and top-5 accuracy per fold, in fold order."""
    if (fold_of < 0).any():
        raise ParamError("results: some clips were never in a test fold")
    top1 = topk_correct(logits, labels, 1)
    top5 = topk_correct(logits, labels, 5)
    return {
        "accuracy": [float(top1[fold_of == f].mean()) for f in range(n_folds)],
        "top5": [float(top5[fold_of == f].mean()) for f in range(n_folds)],
    }


def metric_block(per_fold: dict, params, weights: str, folds) -> dict:
    def stats(values):
        v = np.asarray(values, dtype=np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "folds": [float(x) for x in v]}

    return {"accuracy": stats(per_fold["accuracy"]), "top5": stats(per_fold["top5"]),
            "params": int(np.max(params)) if len(params) else 0, "params_folds": [int(p) for p in params],
            "weights": weights, "fold_names": list(folds)}
