"""Mean-ablation of direct contributions: how much zero-shot accuracy each head or block carries.

A unit's stored direct contribution is replaced by its mean over the fold's training clips,
the embedding is recomputed (e − xᵤ + μᵤ, exact because units sum to the embedding), and
the frozen head classifies the test fold. This needs no forward pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from .protocol import Split
from .units import UnitStore, parse_unit
from .zeroshot import FrozenHead, TextSide


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
    for f, split in enumerate(tqdm(splits, desc="ablation", leave=False)):
        y = torch.from_numpy(store.label[split.test])
        emb = torch.from_numpy(store.embedding[split.test])
        pre = head.pre(emb)
        base[f] = float((head(pre).argmax(1) == y).float().mean())
        means = store.units[split.train_all].mean(0, dtype=np.float64).astype(np.float32)  # [U, D]
        for g, (_, _, idx) in enumerate(groups):
            delta = torch.from_numpy((means[idx][None] - store.units[split.test][:, idx]).sum(1))
            acc[f, g] = float((head(pre + delta @ head.w1.T).argmax(1) == y).float().mean())
    rows = []
    for g, (name, info, idx) in enumerate(groups):
        rows.append(dict(unit=name, **info, accuracy=acc[:, g].mean(), drop=(base - acc[:, g]).mean(),
                         drop_std=(base - acc[:, g]).std(ddof=1) if len(splits) > 1 else 0.0))
    return pd.DataFrame(rows)


def fisher_correlation(ablation: pd.DataFrame, geometry: pd.DataFrame, dataset: str) -> dict:
    """Spearman ρ between each head's accuracy drop and its Fisher score, per geometry regime."""
    heads = ablation[ablation.kind == "head"]
    geo = geometry[geometry["dataset"] == dataset] if "dataset" in geometry else geometry
    out = {}
    for regime, part in geo.groupby("regime") if "regime" in geo else [("all", geo)]:
        merged = heads.merge(part[["stage", "block", "head", "fisher"]], on=["stage", "block", "head"])
        if len(merged) >= 3 and merged["fisher"].nunique() > 1 and merged["drop"].nunique() > 1:
            rho, p = spearmanr(merged["drop"], merged["fisher"])
            out[str(regime)] = {"spearman": float(rho), "p": float(p), "n": int(len(merged))}
    return out
