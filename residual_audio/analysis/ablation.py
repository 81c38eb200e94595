"""Mean-ablation: how much zero-shot accuracy each head or block carries.

Direct effect (`mean_ablation`): a unit's stored direct contribution is replaced by its mean
over the fold's training clips, the embedding is recomputed (e − xᵤ + μᵤ, exact because
units sum to the embedding), and the frozen head classifies the test fold. No forward pass.

Total effect (`total_ablation`): a head's output before the projection
(`layers.{s}.blocks.{b}.attn.hook_z`, every token) is replaced by its mean over the fold's
training clips and tokens — the training mean of `heads/pre` — and everything downstream is
recomputed, so the drop also counts what later blocks did with that head's output. Stages
before the head's stage do not change: the stream entering every stage is computed once per
test clip and each ablated forward starts there (one partial forward per head and clip).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from ..core import logs
from ..data.units import UnitStore, parse_unit
from ..evaluation.protocol import Split
from ..evaluation.zeroshot import FrozenHead, TextSide


def ablation_groups(unit_names: list[str]) -> list[tuple[str, dict, list[int]]]:
    """(name, description, unit indices): every head alone, then every block (its heads and MLP)."""
    groups, blocks = [], {}
    for i, name in enumerate(unit_names):
        info = parse_unit(name)
        if info["kind"] == "head":
            groups.append((name, dict(info, kind="head"), [i]))
        if info["kind"] in ("head", "mlp"):
            blocks.setdefault((info["stage"], info["block"]), []).append(i)
    for (s, b), idx in blocks.items():
        groups.append((f"layers.{s}.blocks.{b}", dict(kind="block", stage=s, block=b, head=-1), idx))
    return groups


@torch.no_grad()
def mean_ablation(store: UnitStore, splits: list[Split], text: TextSide) -> pd.DataFrame:
    """Per head and per block: zero-shot accuracy with the unit mean-ablated, averaged over folds."""
    head = FrozenHead(text)
    groups = ablation_groups(store.unit_names)
    acc = np.zeros((len(splits), len(groups)))
    base = np.zeros(len(splits))
    for f, split in enumerate(logs.progress(splits, desc="ablation", unit="folds", leave=False)):
        y = torch.from_numpy(store.label[split.test])
        emb = torch.from_numpy(store.embedding[split.test])
        pre = head.pre(emb)
        base[f] = float((head(pre).argmax(1) == y).float().mean())
        means = store.unit_means(split.train_all)  # [U, D]
        for g, (_, _, idx) in enumerate(groups):
            delta = torch.from_numpy((means[idx][None] - store.units[split.test][:, idx]).sum(1))
            acc[f, g] = float((head(pre + delta @ head.w1.T).argmax(1) == y).float().mean())
    rows = []
    for g, (name, info, idx) in enumerate(groups):
        rows.append(dict(unit=name, **info, accuracy=acc[:, g].mean(), drop=(base - acc[:, g]).mean(),
                         drop_std=(base - acc[:, g]).std(ddof=1) if len(splits) > 1 else 0.0))
    return pd.DataFrame(rows)


def fisher_correlation(ablation: pd.DataFrame, geometry: pd.DataFrame, dataset: str, column: str = "drop") -> dict:
    """Spearman ρ between each head's accuracy drop (`column`) and its Fisher score, per geometry regime."""
    heads = ablation.loc[ablation.kind == "head", ["stage", "block", "head", column]].rename(columns={column: "drop"}).dropna()
    geo = geometry[geometry["dataset"] == dataset] if "dataset" in geometry else geometry
    out = {}
    for regime, part in geo.groupby("regime") if "regime" in geo else [("all", geo)]:
        merged = heads.merge(part[["stage", "block", "head", "fisher"]], on=["stage", "block", "head"])
        if len(merged) >= 3 and merged["fisher"].nunique() > 1 and merged["drop"].nunique() > 1:
            rho, p = spearmanr(merged["drop"], merged["fisher"])
            out[str(regime)] = {"spearman": float(rho), "p": float(p), "n": int(len(merged))}
    return out


def fitting_fisher(store_path, splits: list[Split], regimes=("pre", "post")) -> pd.DataFrame:
    """Each head's Fisher score (`geometry.fisher_scores`) computed on each fold's training clips only,
    never on its test fold, then averaged over folds: the score the ablation drops are correlated with.
    (The geometry stage's Fisher uses every clip: a descriptive statistic, not for the correlation.)
    Columns regime, stage, block, head, fisher; no rows for a regime the store does not hold
    (`extract.regimes`) or where no fold's training clips define it (fewer than two classes, or a class
    of one clip: no within-class scatter)."""
    from ..data.heads import HeadsStore
    from .fisher import fisher_scores

    store = HeadsStore.open(store_path)
    rows = []
    for regime in regimes:
        for stage in sorted(set(store.rows[:, 0].tolist())):
            if not store.has(store.regime_key(regime, stage)):
                continue
            clouds = store.clouds(regime, stage)  # [heads, N, d]
            per_fold = []
            for s in splits:
                try:
                    per_fold.append(fisher_scores(clouds[:, s.train_all], store.label[s.train_all]))
                except ValueError:  # undefined on this fold's training clips
                    continue
            if not per_fold:
                continue
            for r, value in zip(np.flatnonzero(store.rows[:, 0] == stage), np.mean(per_fold, 0)):
                s, b, h = (int(v) for v in store.rows[r])
                rows.append(dict(regime=regime, stage=s, block=b, head=h, fisher=float(value)))
    return pd.DataFrame(rows, columns=["regime", "stage", "block", "head", "fisher"])


def direct_total_correlation(table: pd.DataFrame) -> dict:
    """Spearman ρ between the heads' direct and total drops (empty when either is constant)."""
    heads = table[table.kind == "head"].dropna(subset=["drop", "total_drop"])
    if len(heads) < 3 or heads["drop"].nunique() < 2 or heads["total_drop"].nunique() < 2:
        return {}
    rho, p = spearmanr(heads["drop"], heads["total_drop"])
    return {"spearman": float(rho), "p": float(p), "n": int(len(heads))}


# --------------------------------------------------------------------------- total effect


def head_mean_hook(index: int, value: torch.Tensor):
    """A `attn.hook_z` hook ([B, T, H, d]) that sets head `index` to `value` [d] on every token."""

    def hook(z: torch.Tensor, name: str) -> torch.Tensor:
        z = z.clone()
        z[:, :, index] = value.to(z)
        return z

    return hook


def stream_points(hooked) -> list[str]:
    """Hook points holding the stream entering each stage (stage 0: after the patch embedding)."""
    return ["hook_patch_embed"] + [f"layers.{s}.hook_merge_out" for s in range(len(hooked.arch.depths) - 1)]


@torch.no_grad()
def stage_streams(hooked, mel: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The stream entering every stage and the unablated embedding, from one forward."""
    names = stream_points(hooked)
    out, cache = hooked.run_with_cache(mel, names=names)
    return [cache[n] for n in names], out["embedding"]


@torch.no_grad()
def ablated_embedding(hooked, streams: list[torch.Tensor], stage: int, block: int, hook) -> torch.Tensor:
    """The embedding with `hook` on `layers.{stage}.blocks.{block}.attn.hook_z`, started from the cached stream."""
    name = f"layers.{stage}.blocks.{block}.attn.hook_z"
    return hooked(start_stage=stage, resid=streams[stage], hooks=[(name, hook)])["embedding"]


def _rows(mel, clips: np.ndarray) -> torch.Tensor:
    """Log-mels of `clips` from an in-memory array or a zarr array (orthogonal selection)."""
    order = np.argsort(clips)
    picked = mel.oindex[clips[order]] if hasattr(mel, "oindex") else mel[clips[order]]
    out = np.empty_like(np.asarray(picked, dtype=np.float32))
    out[order] = picked
    return torch.from_numpy(out)


@torch.no_grad()
def total_ablation(hooked, mel, label: np.ndarray, pre: np.ndarray, head_names: list[str], splits: list[Split],
                   text: TextSide, batch_size: int = 16, device="cpu", make_hook=head_mean_hook,
                   heads: list[int] | None = None) -> pd.DataFrame:
    """Per head: zero-shot accuracy with its output mean-ablated inside the forward, averaged over folds.

    `mel` [N, 1001, 64] (array or zarr), `pre` [N, heads, d] (`heads/pre`, token-mean per clip) with
    `head_names` in its order; `make_hook(index, mean)` builds the replacement (default: the mean);
    `heads` restricts the heads ablated (indices into `head_names`; default all).
    """
    head = FrozenHead(text)
    device = torch.device(device)
    chosen = list(range(len(head_names))) if heads is None else list(heads)
    info = [parse_unit(head_names[u]) for u in chosen]
    correct = np.zeros((len(splits), len(chosen)))
    base = np.zeros(len(splits))
    n_test = np.zeros(len(splits))
    progress = logs.progress(total=sum(len(s.test) for s in splits) * len(chosen), desc="total ablation", unit="clip·head",
                             leave=False)
    for f, split in enumerate(splits):
        means = torch.from_numpy(pre[split.train_all].mean(0, dtype=np.float64).astype(np.float32)).to(device)  # [heads, d]
        for start in range(0, len(split.test), batch_size):
            clips = split.test[start:start + batch_size]
            y = torch.from_numpy(label[clips])
            streams, emb = stage_streams(hooked, _rows(mel, clips).to(device))
            base[f] += float((head(head.pre(emb.float().cpu())).argmax(1) == y).sum())
            for j, (u, unit) in enumerate(zip(chosen, info)):
                hook = make_hook(unit["head"], means[u])
                e = ablated_embedding(hooked, streams, unit["stage"], unit["block"], hook).float().cpu()
                correct[f, j] += float((head(head.pre(e)).argmax(1) == y).sum())
                progress.update(len(clips))
        n_test[f] = len(split.test)
    progress.close()
    base, acc = base / n_test, correct / n_test[:, None]
    drop = base[:, None] - acc
    return pd.DataFrame([
        dict(unit=head_names[u], kind="head", stage=i["stage"], block=i["block"], head=i["head"],
             total_accuracy=acc[:, j].mean(), total_drop=drop[:, j].mean(),
             total_drop_std=drop[:, j].std(ddof=1) if len(splits) > 1 else 0.0)
        for j, (u, i) in enumerate(zip(chosen, info))
    ])
