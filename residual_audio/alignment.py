"""Zero-shot, ResiDual and the baselines run fold by fold under one protocol.

Every method sees the same `Split`s (same test folds, same validation clips) and returns
test logits for the held-out fold; `summarise` turns them into the metrics files.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from .io import atomic_path
from .params import ParamError
from .protocol import Split
from .residual import DirectResiDual, LinearAdapter, UnitBases
from .training import TrainConfig, evaluate, train, trainable_count
from .units import UnitStore
from .zeroshot import FrozenHead, TextSide, topk_correct

METHODS = ("zeroshot", "residual", "linear_probe", "linear_adapter")


@dataclass
class FoldResult:
    method: str
    fold: str
    test: np.ndarray  # store indices of the test clips
    logits: np.ndarray  # [n_test, C]
    params: int
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _audio(head: FrozenHead, embedding: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return head.audio_embed(head.pre(torch.from_numpy(np.asarray(embedding, dtype=np.float32))))


def run_zeroshot(store: UnitStore, split: Split, text: TextSide) -> FoldResult:
    head = FrozenHead(text)
    with torch.no_grad():
        logits = head.logits_from_audio(_audio(head, store.embedding[split.test])).numpy()
    return FoldResult("zeroshot", split.name, split.test, logits, 0)


def run_residual(store: UnitStore, split: Split, text: TextSide, bases: UnitBases, cfg: TrainConfig, beyond: str = "keep") -> FoldResult:
    """Direct-mode ResiDual: train λ on the fold's fitting clips, early-stop on its validation clips."""
    head = FrozenHead(text)
    model = DirectResiDual(head, bases)
    feats = {k: model.features(store.units[idx], store.embedding[idx], beyond) for k, idx in
             (("train", split.train), ("val", split.val), ("test", split.test))}
    history, lr = train(model, feats["train"], store.label[split.train], feats["val"], store.label[split.val], cfg, desc=f"residual {split.name}")
    _, _, logits = evaluate(model, feats["test"], torch.from_numpy(store.label[split.test]))
    lam = model.lam.detach().numpy().copy()
    return FoldResult("residual", split.name, split.test, logits.numpy(), trainable_count(model), history,
                      {"lam": lam, "owner": bases.owner, "explained": bases.explained, "lr": lr})


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


def run_adapter(store: UnitStore, split: Split, text: TextSide, cfg: TrainConfig) -> FoldResult:
    """A 512×512 map on the normalised audio embedding, trained exactly like ResiDual."""
    head = FrozenHead(text)
    model = LinearAdapter(head, head.w2.shape[0])
    a = {k: (_audio(head, store.embedding[idx]),) for k, idx in (("train", split.train), ("val", split.val), ("test", split.test))}
    history, lr = train(model, a["train"], store.label[split.train], a["val"], store.label[split.val], cfg, desc=f"adapter {split.name}")
    _, _, logits = evaluate(model, a["test"], torch.from_numpy(store.label[split.test]))
    return FoldResult("linear_adapter", split.name, split.test, logits.numpy(), trainable_count(model), history, {"lr": lr})


def run_probe(store: UnitStore, split: Split, text: TextSide, grid=(0.1, 1.0, 10.0, 100.0), seed: int = 0) -> FoldResult:
    """Logistic regression on normalised 512-d audio embeddings; C chosen on the validation clips,
    then refitted on all training folds."""
    head = FrozenHead(text)
    x = {k: _audio(head, store.embedding[idx]).numpy() for k, idx in (("train", split.train), ("val", split.val), ("all", split.train_all), ("test", split.test))}
    y = store.label
    n_classes = len(store.classes)

    def fit(c, xs, ys):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(xs, ys)

    best_c, history = grid[len(grid) // 2], []
    if len(split.val):
        scores = []
        for c in grid:
            acc = float((fit(c, x["train"], y[split.train]).predict(x["val"]) == y[split.val]).mean())
            scores.append(acc)
            history.append(dict(C=c, val_acc=acc))
        best_c = grid[int(np.argmax(scores))]
    clf = fit(best_c, x["all"], y[split.train_all])
    logits = np.full((len(split.test), n_classes), -np.inf, dtype=np.float32)
    logits[:, clf.classes_] = clf.decision_function(x["test"]).reshape(len(split.test), -1) if len(clf.classes_) > 2 else np.stack(
        [-clf.decision_function(x["test"]), clf.decision_function(x["test"])], 1)
    params = int(clf.coef_.size + clf.intercept_.size)
    return FoldResult("linear_probe", split.name, split.test, logits, params, history, {"C": best_c})


# --------------------------------------------------------------------------- results


def save_results(path: str | Path, results: list[FoldResult], labels: np.ndarray, classes, weights: str, meta: dict | None = None) -> None:
    """One npz per dataset and stage: test logits per clip (from its own fold) plus per-fold extras."""
    methods = sorted({r.method for r in results})
    folds = list(dict.fromkeys(r.fold for r in results))
    arrays = {"labels": labels, "classes": np.array(classes), "folds": np.array(folds), "methods": np.array(methods),
              "weights": np.array(weights)}
    n_classes = len(classes)
    for m in methods:
        logits = np.full((len(labels), n_classes), np.nan, dtype=np.float32)
        fold_of = np.full(len(labels), -1, dtype=np.int64)
        params = []
        for r in results:
            if r.method != m:
                continue
            logits[r.test] = r.logits
            fold_of[r.test] = folds.index(r.fold)
            params.append(r.params)
            for k, v in r.extra.items():
                if isinstance(v, np.ndarray):
                    arrays[f"{m}/{r.fold}/{k}"] = v
        arrays[f"{m}/logits"], arrays[f"{m}/fold_of"], arrays[f"{m}/params"] = logits, fold_of, np.array(params)
    history = [dict(method=r.method, fold=r.fold, **row) for r in results for row in r.history]
    arrays["history"] = np.array(json.dumps(history))
    arrays["meta"] = np.array(json.dumps(meta or {}))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_results(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: results not found (run the 'train' and 'baselines' stages)")
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    out["history"] = json.loads(str(out["history"]))
    out["meta"] = json.loads(str(out["meta"]))
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
