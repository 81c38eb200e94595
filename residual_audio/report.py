"""The evaluate stage: metrics files, per-fold table, confusion matrices, learning curves,
learned λ per unit and the method × dataset comparison, all from the stored test logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import alignment as al
from .io import atomic_path, write_json, write_text
from .params import check, get
from .units import parse_unit

METRICS_DIR, PLOTS_DIR = Path("metrics"), Path("plots/alignment")


def _csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


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


def lambda_table(res: dict) -> pd.DataFrame:
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


def component_table(res: dict) -> pd.DataFrame:
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


def evaluate_stage(params: dict, results_dir: Path = Path("data/results")) -> None:
    datasets = [get(params, "dataset")]
    methods = get(params, "methods", list(al.METHODS))
    check(isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods), "methods",
          f"must be a non-empty list of method names, got {methods!r}")
    data = collect(datasets, results_dir, methods)
    per_method, fold_rows, learning, comparison = {}, [], [], []
    lambda_tables, component_tables = {}, {}
    for ds, results in data.items():
        for method, res in results.items():
            folds = [str(f) for f in res["folds"]]
            scores = al.fold_scores(res["logits"], res["labels"], res["fold_of"], len(folds))
            block = al.metric_block(scores, res["params"], str(res["weights"]), folds)
            per_method.setdefault(method, {})[ds] = block
            for i, f in enumerate(folds):
                fold_rows.append(dict(dataset=ds, method=method, fold=f, accuracy=scores["accuracy"][i],
                                      top5=scores["top5"][i], params=int(res["params"][i]), weights=block["weights"]))
            comparison.append(dict(method=method, dataset=ds, accuracy=block["accuracy"]["mean"], std=block["accuracy"]["std"],
                                   top5=block["top5"]["mean"], params=block["params"], weights=block["weights"]))
            learning += [dict(dataset=ds, method=method, **row) for row in res["history"] if "epoch" in row]
            if all(f"{folds[0]}/{k}" in res for k in ("lam", "unit_names", "owner", "explained")):  # ResiDual-style λ
                lambda_tables[(ds, method)] = lambda_table(res).assign(method=method)
                component_tables[(ds, method)] = component_table(res).assign(method=method)

    primary = datasets[0]
    for method, blocks in per_method.items():
        write_json(METRICS_DIR / f"{method}.json", dict(blocks[primary], dataset=primary))
    _csv(PLOTS_DIR / "folds.csv", pd.DataFrame(fold_rows))
    _csv(PLOTS_DIR / "learning.csv", pd.DataFrame(learning))
    table = pd.DataFrame(comparison)
    old = PLOTS_DIR / "comparison.csv"  # persistent: one run per dataset fills in its own rows
    if old.is_file():
        previous = pd.read_csv(old)
        table = pd.concat([previous[~previous.dataset.isin(datasets)], table], ignore_index=True)
    table = table.sort_values(["dataset", "method"], kind="stable").reset_index(drop=True)
    _csv(PLOTS_DIR / "comparison.csv", table)
    write_text(METRICS_DIR / "comparison.md", comparison_markdown(table))
    for method, res in data[primary].items():
        classes = [str(c) for c in res["classes"]]
        pred = np.nan_to_num(res["logits"], nan=-np.inf).argmax(1)
        _csv(PLOTS_DIR / "confusion" / f"{method}.csv",
             pd.DataFrame({"actual": [classes[i] for i in res["labels"]], "predicted": [classes[i] for i in pred]}))
    for ds in datasets:
        keys = [k for k in lambda_tables if k[0] == ds]
        _csv(PLOTS_DIR / f"lambda_{ds}.csv", pd.concat([lambda_tables[k] for k in keys], ignore_index=True) if keys else pd.DataFrame())
        _csv(PLOTS_DIR / f"lambda_components_{ds}.csv",
             pd.concat([component_tables[k] for k in keys], ignore_index=True) if keys else pd.DataFrame())
        for _, method in keys:
            weights = per_method[method][ds]["weights"]
            plot_lambda(lambda_tables[(ds, method)], PLOTS_DIR / "lambda" / f"lambda_{ds}_{method}.png",
                        f"{method}: λ per head — {ds} ({weights} weights)")
            if len(component_tables[(ds, method)]):
                plot_lambda_components(component_tables[(ds, method)], PLOTS_DIR / "lambda" / f"lambda_components_{ds}_{method}.png",
                                       f"{method}: which components were amplified or suppressed — {ds} ({weights} weights)")


def comparison_markdown(table: pd.DataFrame) -> str:
    """Method × dataset: top-1 accuracy mean ± std over folds, with trainable parameter counts."""
    if table.empty:
        return "no results\n"
    cells = table.assign(cell=[f"{a:.3f} ± {s:.3f}" for a, s in zip(table.accuracy, table["std"])])
    wide = cells.pivot(index="method", columns="dataset", values="cell")
    params = table.groupby("method")["params"].max()
    weights = sorted(set(table.weights))
    lines = [f"Top-1 accuracy, mean ± std over folds (weights: {', '.join(weights)})", "",
             "| method | " + " | ".join(wide.columns) + " | trainable params |",
             "| --- | " + " | ".join("---" for _ in wide.columns) + " | --- |"]
    order = [m for m in al.METHODS if m in wide.index] + sorted(m for m in wide.index if m not in al.METHODS)
    lines += [f"| {m} | " + " | ".join(str(wide.loc[m, c]) for c in wide.columns) + f" | {params[m]:,} |" for m in order]
    return "\n".join(lines) + "\n"
