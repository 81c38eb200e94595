"""The evaluate stage: metrics files, per-fold table, confusion matrices, learning curves,
learned λ per unit and the method × dataset comparison, all from the stored test logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.io import atomic_path, write_json
from ..core.params import get
from ..data.paths import METRICS_DIR, RESULTS_DIR
from ..data.units import parse_unit
from ..evaluation import results as al
from ..evaluation.results import ALIGNMENT_PLOTS, _csv, comparison_markdown, method_order
from ..evaluation.tasks import task_of


def collect(datasets, results_dir: Path, methods) -> dict:
    """{dataset: {method: result dict}} from data/results/<dataset>/<method>.npz."""
    return {ds: {m: al.load_results(results_dir / ds / f"{m}.npz") for m in methods} for ds in datasets}


def _fold_lambda(res: dict, fold) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(unit names, λ, owner, explained) of one fold; a recipe without PCA has one λ per unit."""
    names = [str(n) for n in res[f"{fold}/unit_names"]]
    lam = np.asarray(res[f"{fold}/lam"])
    owner = np.asarray(res[f"{fold}/owner"])
    if len(lam) == len(names) and len(owner) != len(lam):  # coarse: λ per unit
        return names, lam, np.arange(len(names)), np.ones(len(names), np.float32)
    return names, lam, owner, np.asarray(res[f"{fold}/explained"])


def lambda_table(res: dict, method: str = "residual") -> pd.DataFrame:
    """Per fold and unit: component count and the λ summary (mean weighted by explained variance)."""
    rows = []
    for fold in res["folds"]:
        names, lam, owner, expl = _fold_lambda(res, fold)
        for u, name in enumerate(names):
            sel = owner == u
            w = expl[sel]
            rows.append(dict(fold=str(fold), unit=name, **parse_unit(name), components=int(sel.sum()),
                             lam_mean=float(np.average(lam[sel], weights=w)) if sel.any() and w.sum() > 0 else 1.0,
                             lam_min=float(lam[sel].min()) if sel.any() else 1.0,
                             lam_max=float(lam[sel].max()) if sel.any() else 1.0))
    return pd.DataFrame(rows)


def component_table(res: dict, method: str = "residual") -> pd.DataFrame:
    """Per fold and kept component: its unit, rank within the unit, explained variance and learned λ."""
    frames = []
    for fold in res["folds"]:
        names, lam, owner, expl = _fold_lambda(res, fold)
        if not len(owner):
            continue
        starts = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]
        rank = np.arange(len(owner)) - np.repeat(starts, np.diff(np.r_[starts, len(owner)]))
        units = [parse_unit(names[u]) for u in owner]
        frames.append(pd.DataFrame(dict(fold=str(fold), unit=[names[u] for u in owner], stage=[u["stage"] for u in units],
                                        rank=rank + 1, explained=expl, lam=lam)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["fold", "unit", "stage", "rank", "explained", "lam"])


def plot_lambda_components(table: pd.DataFrame, path: Path, title: str) -> None:
    """λ of every kept component against its rank within its unit, one colour per stage:
    which principal directions ResiDual amplified (λ > 1) or suppressed (λ < 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for s, part in table.groupby("stage"):
        jitter = np.random.default_rng(int(s)).uniform(-0.2, 0.2, len(part))
        ax.scatter(part["rank"] + jitter, part["lam"], s=6, alpha=0.5, label=f"stage {s}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set(xlabel="component rank within its unit (1 = most variance)", ylabel="learned λ")
    ax.set_title(title, fontsize=9)
    ax.legend(markerscale=3, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_lambda(table: pd.DataFrame, path: Path, title: str) -> None:
    """One panel per stage: variance-weighted mean λ per head (rows: blocks), averaged over folds."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = table[table.kind == "head"].groupby(["stage", "block", "head"], as_index=False)["lam_mean"].mean()
    stages = sorted(heads.stage.unique())
    fig, axes = plt.subplots(1, max(len(stages), 1), figsize=(4 * max(len(stages), 1), 3.6), squeeze=False, layout="constrained")
    lim = max(1e-6, float(np.abs(heads.lam_mean - 1).max())) if len(heads) else 1.0
    for ax, s in zip(axes[0], stages):
        part = heads[heads.stage == s]
        grid = np.full((part.block.max() + 1, part["head"].max() + 1), np.nan)
        grid[part.block, part["head"]] = part.lam_mean
        im = ax.imshow(grid, cmap="RdBu_r", vmin=1 - lim, vmax=1 + lim, aspect="auto", interpolation="nearest")
        ax.set(title=f"stage {s}", xlabel="head", ylabel="block", yticks=range(grid.shape[0]))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes[0].tolist(), label="mean λ (variance-weighted)")
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)




def run(params: dict, dataset: str, results_dir: Path = RESULTS_DIR) -> str:
    """Metrics and plots of one dataset from its stored test logits.

    Writes metrics/<dataset>/accuracy/<method>.json (the headline numbers `dvc metrics show` and
    `dvc metrics diff` compare: accuracy mean and std over folds, trainable parameters, weights; one
    row per method), metrics/<dataset>/alignment.json (the same for every method in one file),
    plots/alignment/<dataset>/methods/<method>.json
    (per fold details, and the environment the method was trained in) and plots/alignment/<dataset>/ (folds, learning curves, per-class recall,
    λ tables and figures under lambda/).
    """
    from ..core.logs import progress
    names = get(params, "methods")
    task = task_of(dataset)
    methods = collect([dataset], results_dir, names)[dataset]
    out_plots, out_metrics = ALIGNMENT_PLOTS / dataset, METRICS_DIR / dataset
    headline, details, fold_rows, learning, recall_rows, comparison = {}, {}, [], [], [], []
    weights, correct = set(), {}
    for method in progress(method_order(methods), desc=f"evaluate {dataset}"):
        res = methods[method]
        folds = [str(f) for f in res["folds"]]
        scores = task.fold_scores(res["logits"], res["labels"], res["fold_of"], len(folds))
        block = al.metric_block(scores, res["params"], str(res["weights"]), folds)
        weights.add(block["weights"])
        details[method] = dict(block, dataset=dataset, tuning=res["meta"].get("tuning", "published"),
                               environment=res["meta"].get("environment"))
        headline[method] = {"accuracy": round(block["accuracy"]["mean"], 6), "std": round(block["accuracy"]["std"], 6),
                            "params": block["params"]}
        for i, f in enumerate(folds):
            fold_rows.append(dict(method=method, fold=f, label=f"{method} · {f}", accuracy=scores["accuracy"][i],
                                  top5=scores["top5"][i], params=int(res["params"][i])))
        learning += [dict(method=method, **row) for row in res["history"] if "epoch" in row]
        classes = [str(c) for c in res["classes"]]
        pred = np.nan_to_num(res["logits"], nan=-np.inf).argmax(1)
        correct[method] = (res["fold_of"] >= 0, pred == res["labels"])  # (tested clips, right or not)
        for c, name in enumerate(classes):
            sel = res["labels"] == c
            if sel.any():
                recall_rows.append(dict(method=method, cls=name, recall=float((pred[sel] == c).mean())))
        comparison.append(dict(method=method, dataset=dataset, accuracy=block["accuracy"]["mean"],
                               std=block["accuracy"]["std"], top5=block["top5"]["mean"], params=block["params"],
                               weights=block["weights"]))
    for method, block in details.items():  # each method against zero-shot and the linear probe, fold by fold
        block["paired"] = {f"vs_{ref}": al.paired_test(block["accuracy"]["folds"], details[ref]["accuracy"]["folds"])
                           for ref in al.PAIRED_REFERENCES if ref in details and ref != method
                           and details[ref]["fold_names"] == block["fold_names"]}
        for ref in al.PAIRED_REFERENCES:  # and clip by clip, on the clips both were tested on
            if f"vs_{ref}" in block["paired"]:
                both = correct[method][0] & correct[ref][0]
                block["paired"][f"vs_{ref}"]["bootstrap"] = al.paired_bootstrap(correct[method][1][both],
                                                                                correct[ref][1][both])
    paired = {m: {k: {"p": v["p"], "mean_diff": round(v["mean_diff"], 6),
                      "ci95": [round(c, 6) for c in v["bootstrap"]["ci95"]]} for k, v in b["paired"].items()}
              for m, b in details.items()}
    weight = "random" if "random" in weights else "pretrained"
    tunings = sorted({b["tuning"] for b in details.values()})
    write_json(out_metrics / "alignment.json", {"weights": weight, "tuning": ", ".join(tunings), "paired_test": al.PAIRED_TEST,
                                                "interval": al.BOOTSTRAP,
                                                **{m: {**h, "paired": paired[m]} for m, h in headline.items()}})
    with atomic_path(out_metrics / "accuracy") as tmp:  # what `dvc metrics show` lists: one row per method
        tmp.mkdir(parents=True)
        for method, numbers in headline.items():
            write_json(tmp / f"{method}.json", {**numbers, "weights": details[method]["weights"]})
    with atomic_path(out_plots / "methods") as tmp:
        tmp.mkdir(parents=True)
        for method, block in details.items():
            write_json(tmp / f"{method}.json", block)
    panel = f"{dataset} ({weight} weights)"
    _csv(out_plots / "folds.csv", pd.DataFrame(fold_rows).assign(panel=panel))
    learning_frame = pd.DataFrame(learning)
    if not learning_frame.empty:  # one panel per method in `dvc plots show`, one line per fold
        learning_frame["panel"] = learning_frame["method"] + f" ({weight} weights)"
    _csv(out_plots / "learning.csv", learning_frame)
    recall = pd.DataFrame(recall_rows)
    _csv(out_plots / "recall.csv", recall.assign(panel=recall["method"] + f" ({weight} weights)") if len(recall) else recall)
    with atomic_path(out_plots / "lambda") as tmp:
        tmp.mkdir(parents=True)
        for method, res in methods.items():
            if all(f"{res['folds'][0]}/{k}" in res for k in ("lam", "unit_names", "owner", "explained")):  # ResiDual-style λ
                lt, ct = lambda_table(res), component_table(res)
                _csv(tmp / f"{method}.csv", lt)
                plot_lambda(lt, tmp / f"{method}.png", f"{method}: λ per head — {dataset} ({weight} weights)")
                _csv(tmp / f"{method}_components.csv", ct)
                if len(ct):
                    plot_lambda_components(ct, tmp / f"{method}_components.png",
                                           f"{method}: which components were amplified or suppressed — {dataset} ({weight} weights)")
    table = pd.DataFrame(comparison)
    print(comparison_markdown(table), end="")
    return str(out_metrics / "alignment.json")




