"""Geometry of every attention head: intrinsic dimension, statistics across stages,
specialization (spectral fingerprints) and class discriminability (Fisher score).

Input is the extraction store `data/heads/<dataset>.zarr`; each head is analysed in two
regimes: `pre` (its 24-dim output before the output projection) and `post` (its
contribution to the residual stream after the projection, width of its stage).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from scipy import stats
from scipy.cluster.hierarchy import leaves_list, linkage

from ..core import logs
from ..data.heads import HeadsStore
from ..data.stores import StoreError
from . import figures as geometry_figures
from . import intrinsic
from .figures import LAYER_METRICS
from .fisher import fisher_scores

REGIMES = ("pre", "post")
HEAD_COLUMNS = [
    "dataset", "regime", "stage", "block", "head",
    "pca90", "pca95", "pca99", "evr1", "pr", "effrank", "twonn", "mle", "fisher",
]  # fmt: skip
METRICS = ["pca90", "pca95", "pca99", "evr1", "pr", "effrank", "twonn", "mle", "fisher"]
# Layer-table names (as in the paper tables) → heads.csv columns.
SUMMARY_METRICS = ["pca90", "pca99", "twonn", "mle", "pr", "effrank", "evr1", "fisher"]




# ----------------------------------------------------------------------------- store


@dataclass
class HeadStore:
    """Read access to `data/heads/<dataset>.zarr` with its layout checked up front."""

    path: Path
    dataset: str
    weights: str
    variant: str
    classes: list[str]
    rows: np.ndarray  # [H, 3] (stage, block, head) in heads/pre storage order
    label: np.ndarray
    group: zarr.Group = field(repr=False)
    source: HeadsStore = field(repr=False)  # the one reader, which reads the clouds

    @property
    def n_clips(self) -> int:
        return len(self.label)

    @property
    def stages(self) -> list[int]:
        return sorted(set(self.rows[:, 0].tolist()))

    @property
    def depth(self) -> np.ndarray:
        """Global block index (0 = first block of stage 0) of every head."""
        blocks = sorted(set(map(tuple, self.rows[:, :2].tolist())))
        index = {sb: i for i, sb in enumerate(blocks)}
        return np.array([index[(s, b)] for s, b in self.rows[:, :2].tolist()])

    def stage_heads(self, stage: int) -> np.ndarray:
        """heads/pre row indices of one stage, in storage order (= heads/post/stage{s} rows)."""
        return np.flatnonzero(self.rows[:, 0] == stage)

    def clouds(self, regime: str, stage: int) -> np.ndarray:
        """Points of every head of one stage as [heads, N, d] (float32)."""
        return self.source.clouds(regime, stage)


def open_store(path: str | Path) -> HeadStore:
    """A heads store (read through `data.heads.HeadsStore`) with what the geometry stage needs on top:
    `heads/pre`, every stage's `heads/post`, the `variant` and `dataset` attributes and two classes."""
    store = HeadsStore.open(path, need=("heads/pre",))
    for stage in sorted(set(store.rows[:, 0].tolist())):
        if not store.has(f"heads/post/stage{stage}"):
            raise StoreError(f"{store.path}: array 'heads/post/stage{stage}' is missing")
    for key in ("variant", "dataset"):
        if key not in store.attrs:
            raise StoreError(f"{store.path}: missing attribute '{key}'")
    if len(np.unique(store.label)) < 2:
        raise StoreError(f"{store.path}: 'label' holds fewer than 2 classes; the Fisher score needs at least 2")
    return HeadStore(store.path, str(store.attrs["dataset"]), store.weights, store.variant, store.classes,
                     store.rows, store.label, store.group, store)


# ----------------------------------------------------------------------------- per head


def class_mean_norms(x: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean activation norm ||x|| of each head [H, N, d] over the clips of each class → [H, C]
    (NaN for a class without clips)."""
    norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=-1)  # [H, N]
    onehot = np.eye(n_classes)[labels]  # [N, C]
    counts = onehot.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, norms @ onehot / counts, np.nan)


@dataclass
class RegimeGeometry:
    """Everything measured for one dataset and regime; rows in heads/pre storage order."""

    table: pd.DataFrame  # HEAD_COLUMNS + depth, twonn_mle, spectral_entropy, n_duplicates
    spectra: list[np.ndarray]  # normalised eigenspectrum of every head (length = its width)
    class_norms: np.ndarray  # [H, C]
    classes: list[str]


def analyse_regime(
    store: HeadStore,
    regime: str,
    mle_k: int = 20,
    twonn_discard: float = 0.1,
    duplicate_rtol: float = 1e-6,
    heads_per_batch: int = 8,
    progress=None,
) -> RegimeGeometry:
    """All per-head measurements of one regime, computed in batches of heads."""
    if mle_k >= store.n_clips:
        raise ValueError(f"{store.path}: mle_k={mle_k} needs more than {mle_k} clips, the store has {store.n_clips}")
    parts, spectra, norms, duplicates = [], [], [], []
    for stage in store.stages:
        rows = store.stage_heads(stage)
        clouds = store.clouds(regime, stage)
        for start in range(0, len(rows), heads_per_batch):
            batch = clouds[start : start + heads_per_batch]
            names = [tuple(store.rows[i]) for i in rows[start : start + heads_per_batch]]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", intrinsic.DuplicatePointsWarning)
                est = intrinsic.estimate(batch, mle_k=mle_k, twonn_discard=twonn_discard, duplicate_rtol=duplicate_rtol)
            for w in caught:
                if not issubclass(w.category, intrinsic.DuplicatePointsWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            duplicates.extend((name, n) for name, n in zip(names, est["n_duplicates"]) if n)
            part = pd.DataFrame({key: est[key] for key in ("pca90", "pca95", "pca99", "evr1", "pr", "effrank", "twonn", "mle", "twonn_mle", "n_duplicates")})
            part["fisher"] = fisher_scores(batch, store.label)
            part["spectral_entropy"] = intrinsic.spectral_entropy(est["eigenvalues"])
            part[["stage", "block", "head"]] = np.array(names)
            parts.append(part)
            spectra.extend(est["eigenvalues"] / est["eigenvalues"].sum(axis=1, keepdims=True))
            norms.append(class_mean_norms(batch, store.label, len(store.classes)))
            if progress is not None:
                progress.update(len(batch))
    if duplicates:
        worst = max(duplicates, key=lambda item: item[1])
        warnings.warn(
            f"{store.path} ({regime}): duplicate clips (zero nearest-neighbour distance) were removed before the "
            f"nonlinear estimates in {len(duplicates)} of {len(store.rows)} heads (most: {worst[1]} clips in "
            f"stage {worst[0][0]} block {worst[0][1]} head {worst[0][2]})",
            intrinsic.DuplicatePointsWarning,
            stacklevel=2,
        )
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "regime", regime)
    table.insert(0, "dataset", store.dataset)
    order = {tuple(r): i for i, r in enumerate(store.rows.tolist())}
    position = np.array([order[tuple(r)] for r in table[["stage", "block", "head"]].to_numpy().tolist()])
    table["depth"] = store.depth[position]
    table = table.iloc[np.argsort(position)].reset_index(drop=True)
    spectra = [spectra[i] for i in np.argsort(position)]
    class_norms = np.concatenate(norms)[np.argsort(position)]
    for col in ("stage", "block", "head", "pca90", "pca95", "pca99", "n_duplicates", "depth"):
        table[col] = table[col].astype(np.int64)
    return RegimeGeometry(table, spectra, class_norms, store.classes)


# ----------------------------------------------------------------------------- tables




def _full_table(results: list[RegimeGeometry]) -> pd.DataFrame:
    table = pd.concat([r.table for r in results], ignore_index=True)
    table["linear_nonlinear_ratio"] = table["pca99"] / table["twonn"]
    return table


def block_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per block means (and stds) of every metric and of the PCA99 / TwoNN ratio."""
    metrics = METRICS + ["linear_nonlinear_ratio"]
    grouped = table.groupby(["dataset", "regime", "stage", "block", "depth"], sort=True)
    out = grouped[metrics].mean()
    out["linear_nonlinear_ratio_std"] = grouped["linear_nonlinear_ratio"].std(ddof=1)
    out["n_heads"] = grouped.size()
    return out.reset_index()


def layer_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over the heads of each stage (d_PCA90, d_PCA99, TwoNN, PR, EffRank, EVR1)."""
    grouped = table.groupby(["dataset", "regime", "stage"], sort=True)
    out = grouped.size().rename("n_heads").to_frame()
    for name, column in LAYER_METRICS.items():
        out[f"{name}_mean"] = grouped[column].mean()
        out[f"{name}_std"] = grouped[column].std(ddof=1)
    return out.reset_index()


def _cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan")


def stage_statistics(table: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """Do stages differ? Per dataset × regime × metric: one-way ANOVA over stages, Tukey HSD,
    Welch t-tests between every pair of stages (Bonferroni-corrected, with Cohen's d) and the
    Spearman correlation of the metric with block depth. Pairwise effects (Tukey's mean
    difference, Welch's t, Cohen's d) all carry the sign of group_a − group_b. Undefined tests (a constant metric,
    a stage with one head) are reported as NaN rather than dropped."""
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    rows = []
    for (dataset, regime), sub in table.groupby(["dataset", "regime"], sort=True):
        stages = sorted(sub["stage"].unique())
        for metric in metrics:
            groups = [sub.loc[sub["stage"] == s, metric].to_numpy(float) for s in stages]
            base = {"dataset": dataset, "regime": regime, "metric": metric}
            constant = np.ptp(sub[metric].to_numpy(float)) == 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if len(stages) > 1 and not constant:
                    anova = stats.f_oneway(*groups)
                    f, p = float(anova.statistic), float(anova.pvalue)
                else:
                    f = p = float("nan")
                rows.append({**base, "test": "anova", "statistic": f, "pvalue": p, "p_adjusted": p})

                pairs = list(itertools.combinations(range(len(stages)), 2))
                if pairs and not constant and len(sub) > len(stages):
                    tukey = pairwise_tukeyhsd(sub[metric].to_numpy(float), sub["stage"].to_numpy())
                    # statsmodels reports mean(b) − mean(a); every effect here is a − b, like Welch's t and Cohen's d
                    for (i, j), diff, padj, reject in zip(pairs, tukey.meandiffs, tukey.pvalues, tukey.reject):
                        rows.append({**base, "test": "tukey_hsd", "group_a": f"stage{stages[i]}", "group_b": f"stage{stages[j]}",
                                     "statistic": -float(diff), "pvalue": float(padj), "p_adjusted": float(padj),
                                     "effect": -float(diff), "reject": bool(reject)})  # fmt: skip

                tests = []
                for i, j in pairs:
                    a, b = groups[i], groups[j]
                    if len(a) > 1 and len(b) > 1 and not constant:
                        t = stats.ttest_ind(a, b, equal_var=False)
                        tests.append((i, j, float(t.statistic), float(t.pvalue), _cohens_d(a, b)))
                    else:
                        tests.append((i, j, float("nan"), float("nan"), float("nan")))
                # Bonferroni over all stage pairs (untestable pairs still count)
                padj = np.minimum(1.0, np.array([t[3] for t in tests], dtype=float) * len(pairs))
                for (i, j, t_stat, pv, d), pa in zip(tests, padj):
                    rows.append({**base, "test": "welch_t_bonferroni", "group_a": f"stage{stages[i]}", "group_b": f"stage{stages[j]}",
                                 "statistic": t_stat, "pvalue": pv, "p_adjusted": float(pa), "effect": d,
                                 "reject": bool(pa < 0.05) if np.isfinite(pa) else None})  # fmt: skip

                if not constant:
                    rho = stats.spearmanr(sub["depth"], sub[metric])
                    r, p = float(rho.statistic), float(rho.pvalue)
                else:
                    r = p = float("nan")
                rows.append({**base, "test": "spearman_depth", "statistic": r, "pvalue": p, "p_adjusted": p, "effect": r})
    columns = ["dataset", "regime", "metric", "test", "group_a", "group_b", "statistic", "pvalue", "p_adjusted", "effect", "reject"]
    return pd.DataFrame(rows).reindex(columns=columns)


@dataclass
class Specialization:
    """Spectral fingerprints of one dataset × regime and the head similarity they induce."""

    fingerprints: np.ndarray  # [H, K] normalised eigenvalues, K = smallest head width
    similarity: np.ndarray  # [H, H] cosine similarity between fingerprints
    order: np.ndarray  # Ward-clustering leaf order of the heads
    entropy_rho: float  # Spearman ρ(spectral entropy, d_PCA99)
    entropy_pvalue: float


def specialization(result: RegimeGeometry) -> Specialization:
    """Heads with the same spectral shape are specialised alike; Ward clustering groups them."""
    k = min(len(s) for s in result.spectra)
    fp = np.stack([s[:k] for s in result.spectra])
    unit = fp / np.linalg.norm(fp, axis=1, keepdims=True)
    similarity = np.clip(unit @ unit.T, -1.0, 1.0)
    order = leaves_list(linkage(fp, method="ward", optimal_ordering=True)) if len(fp) > 1 else np.zeros(1, int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(result.table["spectral_entropy"], result.table["pca99"])
    return Specialization(fp, similarity, order, float(rho.statistic), float(rho.pvalue))


def cross_dataset_tables(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-stage means by dataset, per-head rank agreement between every pair of datasets)."""
    means = table.groupby(["regime", "stage", "dataset"], sort=True)[SUMMARY_METRICS].mean().reset_index()
    datasets = sorted(table["dataset"].unique())
    rows = []
    for regime, sub in table.groupby("regime", sort=True):
        wide = {d: sub[sub["dataset"] == d].set_index(["stage", "block", "head"]).sort_index() for d in datasets}
        for a, b in itertools.combinations(datasets, 2):
            common = wide[a].index.intersection(wide[b].index)
            for metric in SUMMARY_METRICS:
                x, y = wide[a].loc[common, metric], wide[b].loc[common, metric]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rho = stats.spearmanr(x, y)
                rows.append({"regime": regime, "metric": metric, "dataset_a": a, "dataset_b": b, "n_heads": len(common),
                             "mean_a": float(x.mean()), "mean_b": float(y.mean()),
                             "spearman_rho": float(rho.statistic), "pvalue": float(rho.pvalue)})  # fmt: skip
    return means, pd.DataFrame(rows)


def metrics_summary(table: pd.DataFrame, stores: list[HeadStore]) -> dict:
    """Per dataset × regime × stage means of the summary metrics, for `dvc metrics diff`."""
    out = {
        "weights": _common(stores, "weights"),
        "variant": _common(stores, "variant"),
        "datasets": {},
    }
    for store in stores:
        entry = {"n_clips": store.n_clips}
        for regime, sub in table[table["dataset"] == store.dataset].groupby("regime", sort=True):
            entry[regime] = {
                f"stage{s}": {m: round(float(v), 6) for m, v in g[SUMMARY_METRICS].mean().items()}
                for s, g in sub.groupby("stage", sort=True)
            }
            entry[regime]["all"] = {m: round(float(v), 6) for m, v in sub[SUMMARY_METRICS].mean().items()}
        out["datasets"][store.dataset] = entry
    return out


def _common(stores: list[HeadStore], attr: str) -> str:
    values = {getattr(s, attr) for s in stores}
    if len(values) > 1:
        detail = ", ".join(f"{s.path}: {getattr(s, attr)}" for s in stores)
        raise StoreError(f"stores disagree on attribute '{attr}' ({detail}); compare like with like")
    return values.pop()


# ----------------------------------------------------------------------------- run


def run(
    store_paths: list[str | Path],
    out_dir: str | Path,
    metrics_path: str | Path,
    regimes=REGIMES,
    mle_k: int = 20,
    twonn_discard: float = 0.1,
    duplicate_rtol: float = 1e-6,
) -> dict:
    """Analyse every store and write tables, figures (under out_dir) and the metrics JSON.

    Nothing is written unless everything succeeds; returns the metrics dictionary.
    """
    from ..core.io import atomic_path, write_json

    stores = [open_store(p) for p in store_paths]
    names = [s.dataset for s in stores]
    if len(set(names)) != len(names):
        raise StoreError(f"two stores carry the same attribute 'dataset': {names}")
    weights = _common(stores, "weights")
    _common(stores, "variant")

    total = sum(len(s.rows) for s in stores) * len(regimes)
    results: dict[tuple[str, str], RegimeGeometry] = {}
    with logs.progress(total=total, desc="geometry (heads)", unit="heads") as bar:
        for store in stores:
            for regime in regimes:
                results[store.dataset, regime] = analyse_regime(
                    store, regime, mle_k, twonn_discard, duplicate_rtol, progress=bar
                )
    table = _full_table(list(results.values()))
    blocks, layers = block_table(table), layer_table(table)
    statistics = stage_statistics(table)
    special = {key: specialization(r) for key, r in results.items()}
    summary = metrics_summary(table, stores)
    summary["params"] = {"regimes": list(regimes), "mle_k": mle_k, "twonn_discard": twonn_discard, "duplicate_rtol": duplicate_rtol}
    summary["entropy_vs_pca99_spearman"] = {f"{d}/{r}": round(s.entropy_rho, 6) for (d, r), s in special.items()}
    summary["environment"] = {s.dataset: _environment(s) for s in stores}

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        # `panel` labels the facets of the DVC plots: the dataset and the weights behind it
        table[HEAD_COLUMNS].assign(panel=table["dataset"] + f" ({weights} weights)").to_csv(tmp / "heads.csv", index=False)
        blocks.assign(panel=blocks["dataset"] + f" ({weights} weights)").to_csv(tmp / "blocks.csv", index=False)
        layers.assign(panel=layers["dataset"] + f" ({weights} weights)").to_csv(tmp / "layers.csv", index=False)
        statistics.to_csv(tmp / "stats.csv", index=False)
        _write_specialization_tables(tmp, results, special)
        _write_class_norms(tmp, results)
        if len(stores) > 1:
            means, agreement = cross_dataset_tables(table)
            means.to_csv(tmp / "cross_dataset.csv", index=False)
            agreement.to_csv(tmp / "cross_dataset_heads.csv", index=False)
            geometry_figures.cross_dataset(means, tmp / "figures" / "cross_dataset.png", weights)
        for store in stores:
            figures = tmp / "figures" / store.dataset
            sub = {r: results[store.dataset, r] for r in regimes}
            geometry_figures.dataset_figures(
                store.dataset, weights, table[table["dataset"] == store.dataset], blocks[blocks["dataset"] == store.dataset],
                layers[layers["dataset"] == store.dataset], sub, {r: special[store.dataset, r] for r in regimes}, figures,
            )  # fmt: skip
        write_json(tmp / "summary.json", summary)  # every mean, the params and the entropy correlations
        write_json(metrics_path, headline_metrics(summary))
    return summary


HEADLINE_METRICS = ("pca99", "twonn")  # what `dvc metrics show` / `dvc exp show` carry per regime and stage


def _environment(store: HeadStore) -> dict:
    """The environment of one dataset's geometry (computed on the CPU), with its clips' and model's hashes."""
    from ..core.environment import clips_sha256, environment

    g = store.group
    ids = [str(c) for c in g["clip_id"][:]] if "clip_id" in g else range(len(store.label))
    return environment("cpu", dataset=store.dataset, clips_sha256=clips_sha256(ids, store.label, g["fold"][:]),
                       checkpoint_sha256=str(g.attrs.get("checkpoint_sha256", "")), family=str(g.attrs.get("family", "laion")),
                       weights=store.weights)


def headline_metrics(summary: dict) -> dict:
    """The few numbers a researcher compares across experiments: per dataset, regime and stage
    the mean d_PCA99 and TwoNN over heads, and the weights flag (the rest stays in summary.json)."""
    out: dict = {"weights": summary["weights"]}
    for dataset, entry in summary["datasets"].items():
        out[dataset] = {regime: {stage: {m: values[m] for m in HEADLINE_METRICS} for stage, values in stages.items()
                                 if stage != "all"}
                        for regime, stages in entry.items() if isinstance(stages, dict)}
    return out


def _head_index(result: RegimeGeometry) -> pd.DataFrame:
    return result.table[["dataset", "regime", "stage", "block", "head"]]


def _write_specialization_tables(out: Path, results, special) -> None:
    frames = []
    for key, result in results.items():
        sp = special[key]
        frame = _head_index(result).copy()
        frame["spectral_entropy"] = result.table["spectral_entropy"]
        frame["pca99"] = result.table["pca99"]
        frame["ward_position"] = np.argsort(sp.order)
        fp = pd.DataFrame(sp.fingerprints, columns=[f"lambda{i + 1}" for i in range(sp.fingerprints.shape[1])])
        frames.append(pd.concat([frame.reset_index(drop=True), fp], axis=1))
        names = [f"s{s}b{b}h{h}" for s, b, h in result.table[["stage", "block", "head"]].to_numpy()]
        sim = pd.DataFrame(sp.similarity, index=names, columns=names)
        sim.to_csv(out / f"similarity_{key[0]}_{key[1]}.csv", index_label="head")
    pd.concat(frames, ignore_index=True).to_csv(out / "fingerprints.csv", index=False)


def _write_class_norms(out: Path, results) -> None:
    frames = []
    for result in results.values():
        index = _head_index(result)
        for c, name in enumerate(result.classes):
            frame = index.copy()
            frame["class"] = name
            frame["mean_norm"] = result.class_norms[:, c]
            frames.append(frame)
    pd.concat(frames, ignore_index=True).to_csv(out / "class_activation.csv", index=False)


# ----------------------------------------------------------------------------- params




