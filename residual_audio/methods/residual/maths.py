"""ResiDual: reweighting the principal components of residual units (Basile et al., 2025).

For a unit with mean μ and orthonormal PCA components Φ (rows), ResiDual maps its
contribution x to RD(x) = Φᵀ diag(λ) Φ (x − μ) + μ. It is computed here as the
correction x + Φᵀ diag(λ − 1) Φ (x − μ) to the exact contribution, so that λ = 1 leaves
every number untouched in floating point and the untrained model *is* the zero-shot
model. Components past the explained-variance threshold are either kept unchanged
(`beyond: keep`, λ fixed at 1) or dropped (`beyond: drop`, λ fixed at 0).

This module holds the shared math (per-unit PCA, the threshold rule, `rd`) and the
`Recipe` table; the direct-mode estimators built from it are in `recipes.py`, inject mode
in `inject.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...core import logs
from ...core.params import ParamError
from ...core.schema import RECIPE_DEFAULTS

BEYOND = ("keep", "drop")


@dataclass
class UnitBases:
    """PCA bases of the chosen units, fitted on the training folds of one fold."""

    unit_names: list[str]  # the reweighted units, in store order
    unit_index: np.ndarray  # [U] their indices in the store
    means: np.ndarray  # [U, D]
    components: np.ndarray  # [J, D] kept components of all units, unit after unit (rows orthonormal per unit)
    owner: np.ndarray  # [J] which unit (0..U-1) each component belongs to
    explained: np.ndarray  # [J] explained-variance ratio of each component within its unit
    threshold: float
    back: np.ndarray | None = None  # [J, D] rows that map the coordinates back (`reconstruct: released`); None: `components`

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.owner, minlength=len(self.unit_names))

    def unit_slices(self) -> list[slice]:
        ends = np.cumsum(self.counts)
        return [slice(int(e - c), int(e)) for e, c in zip(ends, self.counts)]


def n_components(eigenvalues: np.ndarray, threshold: float) -> int:
    """Fewest leading components whose explained variance reaches `threshold` (eigenvalues descending);
    at 1.0 every component of positive variance, as the released code's `full` (no pruning), even one
    whose share is below the rounding of the cumulative sum."""
    total = float(eigenvalues.sum())
    positive = int((eigenvalues > max(total, 0.0) * 1e-10).sum())
    if total <= 0 or positive == 0:
        return 0
    if threshold >= 1.0:
        return positive
    ratio = np.cumsum(eigenvalues) / total
    return int(min(np.searchsorted(ratio, threshold - 1e-9) + 1, positive))


def unit_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [D], eigenvalues descending [r], components [r, D]) of one unit's training clips.

    float64 throughout; with fewer clips than dimensions the n×n Gram matrix is decomposed
    instead of the D×D covariance (same nonzero spectrum, much cheaper).
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    mu = x.mean(0)
    xc = x - mu
    if n < d:
        evals, v = np.linalg.eigh(xc @ xc.T / (n - 1))
        evals, v = evals[::-1].clip(0), v[:, ::-1]
        keep = evals > evals.max(initial=0) * 1e-12
        comps = (xc.T @ v[:, keep]) / np.sqrt(evals[keep] * (n - 1))
        return mu, evals[keep].copy(), np.ascontiguousarray(comps.T)
    evals, vecs = np.linalg.eigh(xc.T @ xc / (n - 1))
    return mu, evals[::-1].clip(0), np.ascontiguousarray(vecs[:, ::-1].T)


def fixed_signs(components: np.ndarray) -> np.ndarray:
    """The rows of `components` flipped so that each one's largest entry is positive: PCA bases
    then do not depend on the LAPACK build's sign choices (float32)."""
    k = len(components)
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(1)]) if k else np.ones(0)
    return (components * signs[:, None]).astype(np.float32)


def kept_components(eigenvalues: np.ndarray, components: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(components [k, D] with fixed signs, explained-variance ratios [k]) of the leading components
    reaching `threshold`; `eigenvalues` descending, `components` rows in the same order."""
    k = n_components(eigenvalues, threshold)
    ratios = eigenvalues[:k] / max(eigenvalues.sum(), 1e-300)
    return fixed_signs(components[:k]), ratios.astype(np.float32)


def fit_bases(units: np.ndarray, unit_index, unit_names, threshold: float) -> UnitBases:
    """Per-unit mean and PCA on training clips only; `units` is [n_train, U_all, D],
    `unit_index` picks the units to fit."""
    unit_index = np.asarray(unit_index, dtype=np.int64)
    n, _, d = units.shape
    if n < 2:
        raise ParamError(f"params: 'cv.scheme': a fold leaves only {n} training clip(s) to fit bases on")
    means, comps, owner, explained = [], [], [], []
    for j, u in enumerate(logs.progress(unit_index, desc="bases", unit="units", leave=False)):
        mu, ev, phi = unit_pca(units[:, u, :])
        phi, ratios = kept_components(ev, phi, threshold)
        comps.append(phi)
        owner.append(np.full(len(phi), j, dtype=np.int64))
        explained.append(ratios)
        means.append(mu.astype(np.float32))
    return UnitBases(
        unit_names=[unit_names[i] for i in unit_index],
        unit_index=unit_index,
        means=np.stack(means) if means else np.zeros((0, d), np.float32),
        components=np.concatenate(comps) if comps else np.zeros((0, d), np.float32),
        owner=np.concatenate(owner) if owner else np.zeros(0, np.int64),
        explained=np.concatenate(explained) if explained else np.zeros(0, np.float32),
        threshold=float(threshold),
    )






def released_back(components: np.ndarray, dim: int) -> np.ndarray:
    """The rows the released code maps a unit's coordinates back with (`nn/adapter.py`, `ResiDual`).

    Its inverse basis is Bᵀ when the basis is square and (B Bᵀ)⁻¹ B otherwise, applied as
    `einsum("nrk,rkd->nrd")`: with a square basis that contracts the coordinates with Φ's columns,
    (c ⊙ λ) Φᵀ, where the paper's equation has (c ⊙ λ) Φ. With fewer rows (a PCA of fewer clips than
    dimensions) (B Bᵀ)⁻¹ B = B for orthonormal rows, which is the paper's map. `components` [r, D] are
    the unit's rows, all of them when r = D.
    """
    components = np.asarray(components, np.float32)
    return np.ascontiguousarray(components.T) if components.shape[0] == dim else components


def rd(x: torch.Tensor, components: torch.Tensor, mean: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """RD(x) = x + Φᵀ diag(λ − 1) Φ (x − μ) for one unit; x [..., D], Φ [k, D], λ [k]."""
    coef = (x - mean) @ components.T
    return x + (coef * (lam - 1)) @ components


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """How one ResiDual variant is built and trained; the paper's values are the defaults of
    `RECIPES`, each overridable from `residual.recipes.<name>.<field>` in params.yaml.

    - `units`: which units are reweighted (`heads` | `heads+mlp`), of the stages in `inject_layers`.
    - `pca`: False = one λ per unit on its uncentred contribution (Σ λ_u x_u, no basis, no μ).
    - `variance`: explained-variance threshold of the kept components (1.0 = every component).
    - `beyond`: components past the threshold are kept unchanged (`keep`, λ fixed at 1) or dropped (`drop`, λ fixed at 0).
    - `lam_init`: `ones` (λ = 1) or `normal` (λ = 1 + N(0, 1), seeded).
    - `add_mean`: whether μ is added back after reweighting (RD(x) = Φᵀ diag(λ) Φ (x − μ) [+ μ]).
    - `others`: what happens to units that are not reweighted: `keep` (summed unchanged) or
      `remove` (zero ablation).
    - `lr` (a number, or a grid chosen on the validation clips), `max_epochs`, `patience`,
      `batch_size`: schedule-free AdamW training;
      `select_on`: early stopping and checkpoint choice on `val_accuracy` or `val_loss`;
      `warmup_epochs`: schedule-free warm-up (the released code uses none);
      `select_from_epoch`: the first epoch whose checkpoint may be kept (1 for the paper's recipes, as
      the released code, whose callbacks first evaluate after epoch 1; 0 for `identity`, whose
      untrained state is the zero-shot classifier).
    - `reconstruct`: `paper` (Φᵀ diag(λ) Φ (x − μ), the paper's equation) or `released` (as the released
      code computes it; see `recipes.py`).
    """

    name: str
    units: str
    pca: bool
    variance: float
    beyond: str
    lam_init: str
    add_mean: bool
    others: str
    lr: float | tuple
    max_epochs: int
    patience: int
    batch_size: int
    select_on: str
    warmup_epochs: int
    select_from_epoch: int
    reconstruct: str

    @classmethod
    def of(cls, name: str, values: dict) -> "Recipe":
        """The recipe from a mapping of every field (a list of learning rates becomes a tuple)."""
        lr = values["lr"]
        return cls(name, **{**values, "lr": tuple(float(v) for v in lr) if isinstance(lr, (list, tuple)) else lr})


# Basile et al. (2025), released configs (conf/train/residual_*.gin, nn/adapter.py), and ours: the
# schema's defaults of `residual.recipes.<name>.*` (core.schema.RECIPE_DEFAULTS, their one home).
RECIPES = {name: Recipe.of(name, values) for name, values in RECIPE_DEFAULTS.items()}
