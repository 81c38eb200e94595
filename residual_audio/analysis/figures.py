"""Figures of the geometry stage, one question per figure; every title names the dataset
and the weights, so a figure made with random weights cannot pass for a finding."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "figure.dpi": 110, "savefig.bbox": "tight"})
# the per-layer panels: title -> column of the head table
LAYER_METRICS = {"d_PCA90": "pca90", "d_PCA99": "pca99", "TwoNN": "twonn", "PR": "pr", "EffRank": "effrank", "EVR1": "evr1"}


REGIME_LABELS = {"pre": "pre-projection (head output)", "post": "post-projection (residual contribution)"}
STAGE_COLORS = plt.get_cmap("tab10").colors


def _suptitle(fig, question: str, dataset: str, weights: str) -> None:
    fig.suptitle(f"{question}\n{dataset} · weights: {weights}", fontsize=12)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _stage_axis(ax, table: pd.DataFrame) -> None:
    """Head index on x with stage boundaries and labels."""
    stages = table["stage"].to_numpy()
    bounds = np.flatnonzero(np.diff(stages)) + 0.5
    for b in bounds:
        ax.axvline(b, color="0.6", lw=0.8, ls=":")
    edges = np.concatenate([[-0.5], bounds, [len(stages) - 0.5]])
    for s, (lo, hi) in zip(np.unique(stages), zip(edges[:-1], edges[1:])):
        ax.text((lo + hi) / 2, 1.01, f"stage {s}", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-0.5, len(stages) - 0.5)
    ax.set_xlabel("head (storage order: stage, block, head)")


def dimension_by_head(table, dataset, weights, path) -> None:
    regimes = list(table["regime"].unique())
    fig, axes = plt.subplots(len(regimes), 1, figsize=(11, 3.3 * len(regimes)), squeeze=False)
    for ax, regime in zip(axes[:, 0], regimes):
        sub = table[table["regime"] == regime].reset_index(drop=True)
        x = np.arange(len(sub))
        for metric, label, marker in (("pca99", "d_PCA99", "s"), ("pca90", "d_PCA90", "v"), ("twonn", "TwoNN", "o"), ("mle", "MLE (k-NN)", "^")):
            ax.plot(x, sub[metric], marker=marker, ms=3, lw=0.8, label=label)
        ax.set_ylabel("dimension")
        ax.set_title(REGIME_LABELS.get(regime, regime), pad=14)
        _stage_axis(ax, sub)
        ax.legend(fontsize=8, ncol=4, loc="upper left")
    _suptitle(fig, "How many dimensions does each head use?", dataset, weights)
    fig.tight_layout()
    _save(fig, path)


def linear_nonlinear_ratio(blocks, dataset, weights, path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for regime, sub in blocks.groupby("regime", sort=False):
        ax.errorbar(sub["depth"], sub["linear_nonlinear_ratio"], yerr=sub["linear_nonlinear_ratio_std"].fillna(0),
                    marker="o", capsize=3, label=REGIME_LABELS.get(regime, regime))  # fmt: skip
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    labels = [f"s{s}b{b}" for s, b in blocks.drop_duplicates("depth").sort_values("depth")[["stage", "block"]].to_numpy()]
    ax.set_xticks(sorted(blocks["depth"].unique()), labels, rotation=45)
    ax.set_xlabel("block (stage s, block b)")
    ax.set_ylabel("d_PCA99 / TwoNN (mean ± std over heads)")
    ax.legend(fontsize=8)
    _suptitle(fig, "How much more linear than intrinsic dimension does each block need?", dataset, weights)
    fig.tight_layout()
    _save(fig, path)


def layer_summary(layers, dataset, weights, path) -> None:

    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, name in zip(axes.ravel(), LAYER_METRICS):
        for regime, sub in layers.groupby("regime", sort=False):
            ax.errorbar(sub["stage"], sub[f"{name}_mean"], yerr=sub[f"{name}_std"].fillna(0), marker="o", capsize=3,
                        label=REGIME_LABELS.get(regime, regime))  # fmt: skip
        ax.set_title(name)
        ax.set_xticks(sorted(layers["stage"].unique()))
        ax.set_xlabel("stage")
    axes[0, 0].legend(fontsize=7)
    _suptitle(fig, "How does head geometry change from stage to stage? (mean ± std over heads)", dataset, weights)
    fig.tight_layout()
    _save(fig, path)


def _stage_strip(ax, stages: np.ndarray, vertical: bool) -> None:
    colors = np.array([STAGE_COLORS[s % 10] for s in stages])[:, None, :] if vertical else np.array([STAGE_COLORS[s % 10] for s in stages])[None]
    ax.imshow(colors, aspect="auto", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def spectral_fingerprints(result, special, regime, dataset, weights, path) -> None:
    fp = special.fingerprints
    stages = result.table["stage"].to_numpy()
    shown = min(fp.shape[1], 48)
    fig = plt.figure(figsize=(8, max(4, 0.035 * len(fp) + 2)))
    grid = fig.add_gridspec(1, 3, width_ratios=[0.4, 12, 0.4], wspace=0.05)
    strip, ax, cax = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
    _stage_strip(strip, stages, vertical=True)
    strip.set_ylabel("head (storage order; colour = stage)")
    floor = max(fp[fp > 0].min(initial=1.0), 1e-6)
    im = ax.imshow(np.clip(fp[:, :shown], floor, None), aspect="auto", norm=LogNorm(vmin=floor, vmax=1.0), cmap="viridis", interpolation="nearest")
    ax.set_yticks([])
    ax.set_xlabel(f"principal component (first {shown} of {fp.shape[1]})")
    ax.set_xticks(np.arange(0, shown, max(1, shown // 8)), np.arange(1, shown + 1, max(1, shown // 8)))
    fig.colorbar(im, cax=cax, label="explained-variance fraction λ_i / Σλ")
    _suptitle(fig, f"Spectral fingerprints: how is each head's variance spread? ({regime})", dataset, weights)
    _save(fig, path)


def head_similarity(result, special, regime, dataset, weights, path) -> None:
    order = special.order
    sim = special.similarity[np.ix_(order, order)]
    stages = result.table["stage"].to_numpy()[order]
    fig = plt.figure(figsize=(8, 7.4))
    grid = fig.add_gridspec(2, 3, width_ratios=[0.35, 12, 0.4], height_ratios=[0.35, 12], wspace=0.04, hspace=0.04)
    top, left = fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 0])
    ax, cax = fig.add_subplot(grid[1, 1]), fig.add_subplot(grid[1, 2])
    _stage_strip(top, stages, vertical=False)
    _stage_strip(left, stages, vertical=True)
    left.set_ylabel("heads in Ward-clustering order (colour = stage)")
    im = ax.imshow(sim, cmap="magma", vmin=float(np.floor(sim.min() * 100) / 100), vmax=1.0, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, cax=cax, label="cosine similarity of spectral fingerprints")
    handles = [plt.Rectangle((0, 0), 1, 1, color=STAGE_COLORS[s % 10]) for s in np.unique(stages)]
    ax.legend(handles, [f"stage {s}" for s in np.unique(stages)], loc="upper center", bbox_to_anchor=(0.5, -0.01),
              ncol=len(handles), fontsize=8, frameon=False)  # fmt: skip
    _suptitle(fig, f"Which heads share a spectral shape? ({regime})", dataset, weights)
    _save(fig, path)


def entropy_vs_pca99(results, specials, dataset, weights, path) -> None:
    regimes = list(results)
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.2 * len(regimes), 4.3), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        table = results[regime].table
        for s, sub in table.groupby("stage"):
            ax.scatter(sub["pca99"], sub["spectral_entropy"], s=14, color=STAGE_COLORS[s % 10], label=f"stage {s}", alpha=0.8)
        ax.set_xlabel("d_PCA99")
        ax.set_ylabel("spectral entropy (nats)")
        ax.set_title(f"{REGIME_LABELS.get(regime, regime)}\nSpearman ρ = {specials[regime].entropy_rho:.2f}")
        ax.legend(fontsize=7)
    _suptitle(fig, "Do heads with flatter spectra need more dimensions?", dataset, weights)
    fig.tight_layout()
    _save(fig, path)


def fisher_by_head(table, dataset, weights, path) -> None:
    regimes = list(table["regime"].unique())
    fig, axes = plt.subplots(len(regimes), 1, figsize=(11, 3.0 * len(regimes)), squeeze=False)
    for ax, regime in zip(axes[:, 0], regimes):
        sub = table[table["regime"] == regime].reset_index(drop=True)
        ax.bar(np.arange(len(sub)), sub["fisher"], color=[STAGE_COLORS[s % 10] for s in sub["stage"]], width=0.85)
        ax.set_yscale("log")
        ax.set_ylabel("Fisher score tr(S_B)/tr(S_W)\n(log scale)")
        ax.set_title(REGIME_LABELS.get(regime, regime), pad=14)
        _stage_axis(ax, sub)
    _suptitle(fig, "Which heads separate the classes?", dataset, weights)
    fig.tight_layout()
    _save(fig, path)


def class_activation(result, regime, dataset, weights, path) -> None:
    norms = result.class_norms
    relative = norms / np.nanmean(norms, axis=1, keepdims=True)
    stages = result.table["stage"].to_numpy()
    n_classes = len(result.classes)
    fig = plt.figure(figsize=(max(7, 0.16 * n_classes + 4), max(4, 0.035 * len(norms) + 2.5)))
    grid = fig.add_gridspec(1, 3, width_ratios=[0.4, 12, 0.4], wspace=0.05)
    strip, ax, cax = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
    _stage_strip(strip, stages, vertical=True)
    strip.set_ylabel("head (storage order; colour = stage)")
    spread = np.nanmax(np.abs(relative - 1.0)) if np.isfinite(relative).any() else 0.1
    im = ax.imshow(relative, aspect="auto", cmap="coolwarm", vmin=1 - spread, vmax=1 + spread, interpolation="nearest")
    ax.set_yticks([])
    step = max(1, n_classes // 50)
    ax.set_xticks(np.arange(0, n_classes, step), result.classes[::step], rotation=90, fontsize=6 if n_classes > 20 else 8)
    ax.set_xlabel("class")
    fig.colorbar(im, cax=cax, label="class mean ‖activation‖ / head mean")
    _suptitle(fig, f"Which classes drive each head? ({regime})", dataset, weights)
    _save(fig, path)


def dataset_figures(dataset, weights, table, blocks, layers, results, specials, out: Path) -> None:
    """Every per-dataset figure into `out`."""
    dimension_by_head(table, dataset, weights, out / "dimension_by_head.png")
    linear_nonlinear_ratio(blocks, dataset, weights, out / "linear_nonlinear_ratio.png")
    layer_summary(layers, dataset, weights, out / "layer_summary.png")
    entropy_vs_pca99(results, specials, dataset, weights, out / "entropy_vs_pca99.png")
    fisher_by_head(table, dataset, weights, out / "fisher_by_head.png")
    for regime, result in results.items():
        spectral_fingerprints(result, specials[regime], regime, dataset, weights, out / f"spectral_fingerprints_{regime}.png")
        head_similarity(result, specials[regime], regime, dataset, weights, out / f"head_similarity_{regime}.png")
        class_activation(result, regime, dataset, weights, out / f"class_activation_{regime}.png")


def cross_dataset(means: pd.DataFrame, path: Path, weights: str) -> None:
    metrics = ["pca99", "twonn", "effrank", "fisher"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8))
    styles = {"pre": "-", "post": "--"}
    colors = {d: plt.get_cmap("tab10").colors[i % 10] for i, d in enumerate(sorted(means["dataset"].unique()))}
    for ax, metric in zip(axes, metrics):
        for (regime, dataset), sub in means.groupby(["regime", "dataset"], sort=True):
            ax.plot(sub["stage"], sub[metric], marker="o", ls=styles.get(regime, "-"), color=colors[dataset],
                    label=f"{dataset} ({regime})")  # fmt: skip
        if metric == "fisher":
            ax.set_yscale("log")
        ax.set_title(metric + (" (log scale)" if metric == "fisher" else ""))
        ax.set_xlabel("stage")
        ax.set_xticks(sorted(means["stage"].unique()))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Is head geometry the same across datasets? (stage means)\nweights: {weights}", fontsize=12)
    fig.tight_layout()
    _save(fig, path)
