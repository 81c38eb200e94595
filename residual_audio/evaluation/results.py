"""What every method writes per dataset, and the scores computed from it.

`data/results/<dataset>/<method>.npz` (one layout for every method; see docs/methods.md):
the test logits of every clip from its own fold, and per fold everything it learned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import schema
from ..core.io import atomic_path
from ..data.paths import PLOTS_DIR
from ..data.stores import check_finite, read_npz

ALIGNMENT_PLOTS = PLOTS_DIR / "alignment"  # evaluate's tables and figures

# the schema's default `methods` list (what `train` runs when params.yaml names none), in the order
# of every table, then the registered methods it leaves out
DEFAULT_METHODS = tuple(schema.DEFAULT_METHODS)
METHODS = DEFAULT_METHODS + ("prompt_learning", "residual_inject")


@dataclass
class FoldResult:
    method: str
    fold: str
    test: np.ndarray  # store indices of the test clips
    logits: np.ndarray  # [n_test, C]
    params: int
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def fold_arrays(r: FoldResult) -> tuple[dict, dict]:
    """(arrays, JSON info) holding one fold's result exactly, for the resume cache (no pickle)."""
    arrays = {"test": np.asarray(r.test), "logits": np.asarray(r.logits)}
    info = {"method": r.method, "fold": r.fold, "params": int(r.params), "history": r.history, "extra": {}, "order": []}
    for k, v in r.extra.items():
        info["order"].append(k)
        if isinstance(v, (np.ndarray, np.generic)):
            arrays[f"extra/{k}"] = np.asarray(v)
        else:
            info["extra"][k] = v
    return arrays, json.loads(json.dumps(info, default=_jsonable))


def fold_from_arrays(arrays: dict, info: dict) -> FoldResult:
    extra = {k: arrays[f"extra/{k}"] if f"extra/{k}" in arrays else info["extra"][k] for k in info["order"]}
    return FoldResult(info["method"], info["fold"], arrays["test"], arrays["logits"], info["params"], info["history"], extra)


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


class ResultsError(ValueError):
    """A results file is missing, unreadable or inconsistent; the message names the file."""


REQUIRED = ("method", "labels", "classes", "folds", "logits", "fold_of", "params", "hyper", "meta")


def load_results(path: str | Path, finite: bool = True) -> dict:
    """The arrays of a results file, with `hyper`, `meta` and every `<fold>/history`/`<fold>/chosen`
    decoded; checked: the logits are [clips, classes] with no NaN or inf (unless not `finite`: the leak
    tests poison clips on purpose), one label and one fold per clip, labels naming a class."""
    path = Path(path)
    hint = "rerun the 'train' stage with this method in 'methods'"
    out = read_npz(path, ResultsError, hint, REQUIRED)
    n, c = len(out["labels"]), len(out["classes"])
    if out["logits"].shape != (n, c) or out["fold_of"].shape != (n,) or out["labels"].ndim != 1:
        raise ResultsError(f"{path}: logits {out['logits'].shape}, labels {out['labels'].shape} and fold_of "
                           f"{out['fold_of'].shape} do not agree with {n} clips of {c} classes; {hint}")
    if n and (out["labels"].min() < 0 or out["labels"].max() >= c):
        raise ResultsError(f"{path}: labels outside 0..{c - 1}; {hint}")
    if finite:  # the clips of some test fold (every clip, in a complete run)
        check_finite(path, {"logits": out["logits"][out["fold_of"] >= 0]}, ResultsError, hint)
    try:
        for k in list(out):
            if k in ("hyper", "meta") or k.endswith(("/history", "/chosen", "/recipe")):
                out[k] = json.loads(str(out[k]))
        out["history"] = [dict(fold=str(f), **row) for f in out["folds"] for row in out[f"{f}/history"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"{path}: a history or settings entry is unreadable ({exc.__class__.__name__}: {exc}); {hint}") from None
    return out


def metric_block(per_fold: dict, params, weights: str, folds) -> dict:
    def stats(values):
        v = np.asarray(values, dtype=np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "folds": [float(x) for x in v]}

    return {"accuracy": stats(per_fold["accuracy"]), "top5": stats(per_fold["top5"]),
            "params": int(np.max(params)) if len(params) else 0, "params_folds": [int(p) for p in params],
            "weights": weights, "fold_names": list(folds)}


PAIRED_REFERENCES = ("zeroshot", "linear_probe")  # every method is compared with these, fold by fold
PAIRED_TEST = "Wilcoxon signed-rank, two-sided, exact, over folds (zero differences dropped)"


def paired_test(scores, reference) -> dict:
    """A method's per-fold accuracies against a reference's on the same folds: the Wilcoxon signed-rank
    test (scipy, exact), its p-value, the number of folds and the mean difference. `p` is None when
    every difference is 0 (no test is defined), and with 5 folds it cannot go below 0.0625."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test: {a.shape} against {b.shape} folds")
    d = a - b
    out = {"test": PAIRED_TEST, "n": int(len(d)), "mean_diff": float(d.mean()) if len(d) else 0.0, "p": None}
    if np.count_nonzero(d):
        out["p"] = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="exact").pvalue)
    return out


BOOTSTRAP = "paired bootstrap over clips, percentile 95 % interval (scipy.stats.bootstrap, 10000 resamples, seed 0)"


def paired_bootstrap(correct, reference, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """The accuracy difference of two methods on the same clips (per-clip 0/1 correctness, paired), with a
    percentile 95 % interval from resampling the clips (scipy.stats.bootstrap, paired, seeded)."""
    from scipy.stats import bootstrap

    a, b = np.asarray(correct, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired bootstrap: {a.shape} against {b.shape} clips")
    diff = float(a.mean() - b.mean())
    if np.all(a == b):  # no clip differs: every resample gives 0
        return {"test": BOOTSTRAP, "n": int(len(a)), "diff": diff, "ci95": [0.0, 0.0]}
    res = bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True, vectorized=True,
                    n_resamples=n_resamples, confidence_level=0.95, method="percentile", random_state=seed)
    ci = res.confidence_interval
    return {"test": BOOTSTRAP, "n": int(len(a)), "diff": diff, "ci95": [float(ci.low), float(ci.high)]}


def method_order(methods) -> list[str]:
    """Known methods in their canonical order, then any others alphabetically."""
    known = [m for m in METHODS if m in methods]
    return known + sorted(set(methods) - set(known))


def _csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def comparison_markdown(table: pd.DataFrame) -> str:
    """Method × dataset: top-1 accuracy mean ± std over folds, with trainable parameter counts."""
    if table.empty:
        return "no results\n"
    cells = table.assign(cell=[f"{a:.3f} ± {s:.3f}" for a, s in zip(table.accuracy, table["std"])])
    wide = cells.pivot(index="method", columns="dataset", values="cell")
    params = table.groupby("method")["params"].max()
    weights = sorted(set(table.weights))
    tuning = sorted(set(table.tuning)) if "tuning" in table else ["published"]
    lines = [f"Top-1 accuracy, mean ± std over folds (weights: {', '.join(weights)}; tuning: {', '.join(tuning)}: "
             + ("every method with its published fixed hyper-parameters" if tuning == ["published"] else
                "every trained method an lr grid of the same size, Tip-Adapter the original's α, β search")
             + "; docs/protocol.md)", "",
             "| method | " + " | ".join(wide.columns) + " | trainable params |",
             "| --- | " + " | ".join("---" for _ in wide.columns) + " | --- |"]
    order = method_order(wide.index)
    lines += [f"| {m} | " + " | ".join(str(wide.loc[m, c]) for c in wide.columns) + f" | {params[m]:,} |" for m in order]
    refs = [r for r in PAIRED_REFERENCES if f"p_{r}" in table]
    if refs:
        def p_cell(row):
            return " / ".join("–" if pd.isna(row[f"p_{r}"]) else f"{row[f'p_{r}']:.3g}" for r in refs)

        lines += ["", f"Paired tests, p vs {' / vs '.join(refs)} ({PAIRED_TEST}; –: the same method, or no "
                      "difference on any fold)", "", *_method_table(table, p_cell)]
    if "diff_zeroshot" in table and table["diff_zeroshot"].notna().any():
        def ci_cell(row):
            if pd.isna(row["diff_zeroshot"]):
                return "–"
            return f"{row['diff_zeroshot']:+.3f} [{row['ci_low_zeroshot']:+.3f}, {row['ci_high_zeroshot']:+.3f}]"

        lines += ["", f"Accuracy minus zero-shot, 95 % interval ({BOOTSTRAP})", "", *_method_table(table, ci_cell)]
    return "\n".join(lines) + "\n"


def _method_table(table: pd.DataFrame, cell) -> list[str]:
    """Markdown lines of a method × dataset table whose cells are `cell(row)`, methods in the canonical order."""
    wide = table.assign(cell=[cell(row) for _, row in table.iterrows()]).pivot(index="method", columns="dataset",
                                                                              values="cell")
    return (["| method | " + " | ".join(wide.columns) + " |", "| --- | " + " | ".join("---" for _ in wide.columns) + " |"]
            + [f"| {m} | " + " | ".join(str(wide.loc[m, c]) for c in wide.columns) + " |" for m in method_order(wide.index)])
