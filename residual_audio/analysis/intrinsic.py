"""Intrinsic-dimension estimators, batched over attention heads.

Every function takes either one point cloud `[N, d]` or a stack of clouds `[H, N, d]`
(one per head) and works in float64. Linear estimators read the PCA eigenspectrum
(covariance or Gram eigenvalues, batched `eigvalsh`); nonlinear estimators read the
nearest-neighbour distances of every point, found with batched distance matrices in torch.

Linear:    PCA dimension at an explained-variance threshold, EVR of PC1,
           participation ratio (Σλ)²/Σλ², effective rank exp(H(λ/Σλ)).
Nonlinear: TwoNN (Facco et al. 2017, Sci. Rep. 7:12140) in its linear-fit and
           maximum-likelihood forms; MLE (Levina & Bickel 2004) with the
           MacKay–Ghahramani average of inverses.

Points whose nearest neighbour is (numerically) at distance zero would make the ratio
estimators return 0 or inf, so they are removed with a `DuplicatePointsWarning` and
the estimate uses the remaining distinct points.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_THRESHOLDS = (0.90, 0.95, 0.99)
# Distance matrices of one batch of heads are kept under this many bytes.
DEFAULT_MEMORY_BYTES = 256 * 2**20
# Principal components with less than this fraction of the variance are numerically zero.
RANK_RTOL = 1e-10


class DuplicatePointsWarning(UserWarning):
    """Some points coincide (zero nearest-neighbour distance) and were removed."""


def _as_batch(X) -> tuple[torch.Tensor, bool]:
    """Return X as a float64 tensor [H, N, d] and whether the input was a single cloud."""
    t = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    t = t.to(torch.float64)
    if t.ndim not in (2, 3):
        raise ValueError(f"expected points [N, d] or [heads, N, d], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("points contain NaN or inf")
    return (t.unsqueeze(0), True) if t.ndim == 2 else (t, False)


@contextlib.contextmanager
def _single_thread():
    """Batched eigensolvers of small matrices loop over the batch and gain nothing from
    more BLAS threads, while their thread synchronisation slows them down many-fold on a
    busy machine; run them on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unbatch(values: np.ndarray, single: bool):
    return float(values[0]) if single else values


# ----------------------------------------------------------------------------- linear


def eigenspectrum(X) -> np.ndarray:
    """PCA eigenvalues (sample covariance, descending, clipped at 0) of each cloud.

    Uses the d×d covariance when d ≤ N and the N×N Gram matrix otherwise; both have the
    same non-zero eigenvalues. Returns [H, d] (or [d] for a single cloud).
    """
    x, single = _as_batch(X)
    _, n, d = x.shape
    if n < 2:
        raise ValueError("need at least 2 points for a covariance")
    xc = x - x.mean(dim=1, keepdim=True)
    if d <= n:
        gram = xc.transpose(1, 2) @ xc
    else:
        gram = xc @ xc.transpose(1, 2)
    with _single_thread():
        lam = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0.0) / (n - 1)
    lam = lam[:, :d].numpy()
    if lam.shape[1] < d:  # Gram route: pad the structurally zero eigenvalues
        lam = np.pad(lam, ((0, 0), (0, d - lam.shape[1])))
    return lam[0] if single else lam


def _spectrum_and_coordinates(x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Eigenspectrum [H, d] and the centred points in principal coordinates [H, N, r].

    Pairwise distances are invariant under the rotation, and components carrying less than
    RANK_RTOL of the variance (e.g. float32 rounding around a rank-24 post-projection
    cloud in 768 dims) change them by a relative ~1e-5 at most; dropping them makes the
    neighbour search cost N²·r instead of N²·d.
    """
    _, n, d = x.shape
    xc = x - x.mean(dim=1, keepdim=True)
    if d > n:
        return eigenspectrum(x), xc
    cov = xc.transpose(1, 2) @ xc
    with _single_thread():
        lam, vec = torch.linalg.eigh(cov)
    lam, vec = lam.flip(-1).clamp_min(0.0) / (n - 1), vec.flip(-1)
    rank = int((lam > RANK_RTOL * lam.sum(-1, keepdim=True)).sum(-1).max().clamp_min(1))
    coords = xc @ vec[:, :, :rank] if rank < d else xc
    return lam.numpy(), coords


def _normalised(eigenvalues: np.ndarray) -> np.ndarray:
    lam = np.atleast_2d(np.asarray(eigenvalues, dtype=np.float64))
    total = lam.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        bad = np.flatnonzero(total[:, 0] <= 0).tolist()
        raise ValueError(f"zero total variance (constant points) in cloud(s) {bad}")
    return lam / total


def pca_dimension(eigenvalues, threshold: float) -> np.ndarray:
    """Smallest number of principal components whose explained variance reaches `threshold`."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    cumulative = np.cumsum(_normalised(eigenvalues), axis=1)
    # A relative slack of 1e-12 keeps e.g. exactly-rank-d data at d for threshold 1.0.
    return (cumulative < threshold - 1e-12).sum(axis=1) + 1


def participation_ratio(eigenvalues) -> np.ndarray:
    """(Σλ)² / Σλ²: the number of equally large components with the same spread."""
    p = _normalised(eigenvalues)
    return 1.0 / (p**2).sum(axis=1)


def spectral_entropy(eigenvalues) -> np.ndarray:
    """Shannon entropy (nats) of the normalised eigenspectrum, with 0·log 0 = 0."""
    p = _normalised(eigenvalues)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=1)


def effective_rank(eigenvalues) -> np.ndarray:
    """exp(spectral entropy) (Roy & Vetterli 2007)."""
    return np.exp(spectral_entropy(eigenvalues))


def linear_dimensions(eigenvalues, thresholds=DEFAULT_THRESHOLDS) -> dict[str, np.ndarray]:
    """All linear metrics from eigenspectra [H, d]: pcaXX per threshold, evr1, pr, effrank."""
    p = _normalised(eigenvalues)
    out = {f"pca{round(t * 100)}": pca_dimension(p, t) for t in thresholds}
    out["evr1"] = p[:, 0]
    out["pr"] = participation_ratio(p)
    out["effrank"] = effective_rank(p)
    return out


# ----------------------------------------------------------------------------- neighbours


@dataclass
class Neighbours:
    """Sorted distances to the k nearest distinct neighbours of every point.

    distances: [H, N, k], rows of removed duplicates are NaN.
    kept:      [H, N] bool, False for points removed as duplicates.
    n_duplicates: [H] number of points removed per cloud.
    """

    distances: np.ndarray
    kept: np.ndarray
    n_duplicates: np.ndarray

    @property
    def n_points(self) -> np.ndarray:
        return self.kept.sum(axis=1)


def _knn_block(xb: torch.Tensor, sq: torch.Tensor, rows: slice, k: int, exclude=None) -> torch.Tensor:
    """k smallest squared distances [h, b, k] from the points `rows` to all other points.

    Rows are ranked by ||x_j||² − 2<x_i, x_j> (the distance minus the row constant ||x_i||²),
    so only one N-wide temporary is built; ||x_i||² is added to the k selected values only.
    """
    score = torch.bmm(xb[:, rows], xb.transpose(1, 2))
    score.mul_(-2.0).add_(sq[:, None, :])
    own = torch.arange(rows.start, rows.stop)
    score[:, torch.arange(len(own)), own] = math.inf
    if exclude is not None:
        score.masked_fill_(exclude[:, None, :], math.inf)
    values = torch.topk(score, k, dim=-1, largest=False, sorted=True).values
    return values.add_(sq[:, rows, None]).clamp_min_(0.0)


def _has_close_earlier_point(xb, sq, candidates: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """For (head, point) pairs whose nearest neighbour is within `threshold`: is some
    *earlier* point that close? (Keeps the first of a group of duplicates.)"""
    dup = torch.zeros(xb.shape[:2], dtype=torch.bool)
    for head in torch.unique(candidates[:, 0]).tolist():
        rows = candidates[candidates[:, 0] == head, 1]
        d2 = sq[head, rows, None] + sq[head, None, :] - 2.0 * (xb[head, rows] @ xb[head].T)
        earlier = torch.arange(xb.shape[1])[None, :] < rows[:, None]
        dup[head, rows] = ((d2 <= threshold[head]) & earlier).any(-1)
    return dup


def nearest_neighbours(
    X,
    k: int,
    duplicate_rtol: float = 1e-6,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> Neighbours:
    """k nearest-neighbour distances of every point, batched over clouds.

    A point is a (near-)duplicate when some earlier point lies within
    `duplicate_rtol` × (RMS distance of the cloud to its mean); duplicates are removed
    (the first copy stays) with a warning, and the remaining points' neighbours are
    searched among distinct points only. Raises if fewer than k+1 distinct points remain.
    """
    x, _ = _as_batch(X)
    h, n, _ = x.shape
    if k < 1 or k >= n:
        raise ValueError(f"k={k} neighbours need 1 <= k < N={n}")
    xc = x - x.mean(dim=1, keepdim=True)
    sq_all = (xc * xc).sum(-1)  # [H, N]
    threshold = (duplicate_rtol**2) * sq_all.mean(-1)  # [H], squared
    heads_per_batch = min(h, max(1, int(memory_bytes // (8 * n * n))))
    rows_per_block = n if heads_per_batch > 1 else max(1, int(memory_bytes // (8 * n)))

    distances = np.full((h, n, k), np.nan)
    kept = np.ones((h, n), dtype=bool)
    for h0 in range(0, h, heads_per_batch):
        xb, sq = xc[h0 : h0 + heads_per_batch], sq_all[h0 : h0 + heads_per_batch]
        thr = threshold[h0 : h0 + heads_per_batch]
        blocks = [slice(r0, min(n, r0 + rows_per_block)) for r0 in range(0, n, rows_per_block)]
        d2 = torch.cat([_knn_block(xb, sq, rows, k) for rows in blocks], dim=1)
        dup = torch.zeros(xb.shape[:2], dtype=torch.bool)
        candidates = torch.nonzero(d2[:, :, 0] <= thr[:, None])
        if len(candidates):
            dup = _has_close_earlier_point(xb, sq, candidates, thr)
        if dup.any():  # search again among distinct points only
            d2 = torch.cat([_knn_block(xb, sq, rows, k, exclude=dup) for rows in blocks], dim=1)
        dist = d2.sqrt_()
        dist[dup] = math.nan
        distances[h0 : h0 + len(xb)] = dist.numpy()
        kept[h0 : h0 + len(xb)] = ~dup.numpy()

    n_dup = (~kept).sum(axis=1)
    if n_dup.any():
        which = np.flatnonzero(n_dup)
        detail = ", ".join(f"cloud {i}: {n_dup[i]}" for i in which[:10])
        more = f" (+{len(which) - 10} more clouds)" if len(which) > 10 else ""
        warnings.warn(
            f"removed {int(n_dup.sum())} duplicate or near-duplicate points "
            f"(zero nearest-neighbour distance; {detail}{more})",
            DuplicatePointsWarning,
            stacklevel=2,
        )
    too_few = np.flatnonzero(kept.sum(axis=1) < k + 1)
    if len(too_few):
        raise ValueError(
            f"cloud(s) {too_few.tolist()[:10]} have fewer than k+1={k + 1} distinct points "
            "after removing duplicates"
        )
    return Neighbours(distances, kept, n_dup)


# ----------------------------------------------------------------------------- TwoNN


def twonn_from_neighbours(nn: Neighbours, discard: float = 0.1, method: str = "linear") -> np.ndarray:
    """TwoNN from the first two neighbour distances.

    μ = r2/r1 is Pareto(1, d). 'linear': slope of the fit through the origin of
    −log(1 − F_emp(μ)) on log μ, with F_emp(μ_(i)) = i/N and the largest `discard`
    fraction of μ left out (Facco et al.). 'mle': Pareto-shape maximum likelihood
    (N_kept − 1) / (Σ_{i≤k} log μ_(i) + (N − k) log μ_(k)), treating the discarded
    ratios as censored at μ_(k).
    """
    if not 0.0 <= discard < 1.0:
        raise ValueError(f"discard fraction must lie in [0, 1), got {discard}")
    if method not in ("linear", "mle"):
        raise ValueError(f"method must be 'linear' or 'mle', got {method!r}")
    if nn.distances.shape[2] < 2:
        raise ValueError("TwoNN needs the two nearest neighbours")
    with np.errstate(invalid="ignore"):
        mu = nn.distances[:, :, 1] / nn.distances[:, :, 0]
    mu = np.where(nn.kept, mu, np.inf)
    log_mu = np.log(np.sort(mu, axis=1))  # removed points sort last (inf)
    n = nn.n_points.astype(np.int64)  # [H]
    n_keep = np.floor(n * (1.0 - discard)).astype(np.int64)
    if method == "linear":
        n_keep = np.minimum(n_keep, n - 1)  # F = 1 at i = N has no finite −log(1 − F)
    if np.any(n_keep < 2):
        raise ValueError("fewer than 2 ratios left after discarding")
    i = np.arange(1, log_mu.shape[1] + 1)[None, :]
    use = i <= n_keep[:, None]
    x = np.where(use, log_mu, 0.0)
    if method == "linear":
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(use, -np.log1p(-i / n[:, None]), 0.0)
        return (x * y).sum(axis=1) / (x * x).sum(axis=1)
    last = np.take_along_axis(log_mu, (n_keep - 1)[:, None], axis=1)[:, 0]
    return (n_keep - 1) / (x.sum(axis=1) + (n - n_keep) * last)


def mle_from_neighbours(nn: Neighbours, k: int | None = None) -> np.ndarray:
    """Levina–Bickel MLE with k neighbours, combined over points as 1 / mean(1/m̂_i).

    m̂_i = (k − 1) / Σ_{j<k} log(T_k(x_i) / T_j(x_i)); averaging the inverses
    (MacKay & Ghahramani 2005) is the maximum-likelihood pooling of the points.
    """
    k = nn.distances.shape[2] if k is None else k
    if not 2 <= k <= nn.distances.shape[2]:
        raise ValueError(f"MLE needs 2 <= k <= {nn.distances.shape[2]} neighbours, got {k}")
    t = nn.distances[:, :, :k]
    inverse = np.log(t[:, :, -1:] / t[:, :, :-1]).sum(axis=2) / (k - 1)  # 1/m̂_i
    inverse = np.where(nn.kept, inverse, 0.0)
    mean_inverse = inverse.sum(axis=1) / nn.n_points
    with np.errstate(divide="ignore"):
        return 1.0 / mean_inverse


# ----------------------------------------------------------------------------- all at once


def estimate(
    X,
    mle_k: int = 20,
    twonn_discard: float = 0.1,
    thresholds=DEFAULT_THRESHOLDS,
    duplicate_rtol: float = 1e-6,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> dict[str, np.ndarray]:
    """Every estimator for a stack of clouds [H, N, d] (or one cloud [N, d]).

    Returns arrays [H]: pcaXX per threshold, evr1, pr, effrank, twonn, twonn_mle, mle,
    n_duplicates; and 'eigenvalues' [H, d].
    """
    x, single = _as_batch(X)
    lam, coords = _spectrum_and_coordinates(x)
    out = linear_dimensions(lam, thresholds)
    nn = nearest_neighbours(coords, max(2, mle_k), duplicate_rtol, memory_bytes)
    out["twonn"] = twonn_from_neighbours(nn, twonn_discard, "linear")
    out["twonn_mle"] = twonn_from_neighbours(nn, twonn_discard, "mle")
    out["mle"] = mle_from_neighbours(nn, mle_k)
    out["n_duplicates"] = nn.n_duplicates
    out["eigenvalues"] = lam
    if single:
        return {key: (val[0] if key == "eigenvalues" else float(val[0])) for key, val in out.items()}
    return out


# ----------------------------------------------------------------------------- estimators


class TwoNN:
    """TwoNN intrinsic dimension (scikit-learn style). `fit(X)` on [N, d] or [H, N, d]
    sets `dimension_` (float, or array [H]) and `n_duplicates_`."""

    def __init__(self, discard_fraction: float = 0.1, method: str = "linear", duplicate_rtol: float = 1e-6):
        self.discard_fraction = discard_fraction
        self.method = method
        self.duplicate_rtol = duplicate_rtol

    def fit(self, X, y=None):
        x, single = _as_batch(X)
        nn = nearest_neighbours(x, 2, self.duplicate_rtol)
        self.dimension_ = _unbatch(twonn_from_neighbours(nn, self.discard_fraction, self.method), single)
        self.n_duplicates_ = _unbatch(nn.n_duplicates, single)
        return self


class MLE:
    """Levina–Bickel MLE with MacKay–Ghahramani pooling (scikit-learn style).
    `fit(X)` on [N, d] or [H, N, d] sets `dimension_` and `n_duplicates_`."""

    def __init__(self, k: int = 20, duplicate_rtol: float = 1e-6):
        self.k = k
        self.duplicate_rtol = duplicate_rtol

    def fit(self, X, y=None):
        x, single = _as_batch(X)
        nn = nearest_neighbours(x, self.k, self.duplicate_rtol)
        self.dimension_ = _unbatch(mle_from_neighbours(nn, self.k), single)
        self.n_duplicates_ = _unbatch(nn.n_duplicates, single)
        return self


class LinearDimensions:
    """PCA-based dimensions (scikit-learn style). `fit(X)` sets `eigenvalues_`,
    `pca90_`, `pca95_`, `pca99_` (or one per threshold), `evr1_`, `pr_`, `effrank_`."""

    def __init__(self, thresholds=DEFAULT_THRESHOLDS):
        self.thresholds = tuple(thresholds)

    def fit(self, X, y=None):
        x, single = _as_batch(X)
        lam = eigenspectrum(x)
        self.eigenvalues_ = lam[0] if single else lam
        for name, values in linear_dimensions(lam, self.thresholds).items():
            setattr(self, name + "_", _unbatch(np.asarray(values), single))
        return self
