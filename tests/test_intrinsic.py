"""Intrinsic-dimension estimators on point clouds whose dimension is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_swiss_roll

from residual_audio.analysis import intrinsic

N = 1500


def embed(points: np.ndarray, ambient: int, seed: int = 0) -> np.ndarray:
    """Isometric linear embedding of `points` [N, d] into `ambient` dims."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((ambient, points.shape[1])))
    return points @ q.T


def gaussian(d: int, n: int = N, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def cube(d: int, n: int = N, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, d))


def sphere(d: int, n: int = N, seed: int = 3) -> np.ndarray:
    """Uniform points on the unit d-sphere in R^{d+1}."""
    x = np.random.default_rng(seed).standard_normal((n, d + 1))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def closed_curve(n: int = N, seed: int = 4) -> np.ndarray:
    """A 1-dimensional closed curve spanning 12 linear dimensions."""
    t = np.random.default_rng(seed).uniform(0, 2 * np.pi, n)
    return np.concatenate([np.stack([np.cos(j * t), np.sin(j * t)], 1) for j in range(1, 7)], 1)


@pytest.mark.parametrize("ambient", [24, 768])
@pytest.mark.parametrize("sampler", [gaussian, cube])
@pytest.mark.parametrize("d", [2, 5])
def test_linear_subspace_dimension_is_recovered(ambient, sampler, d):
    result = intrinsic.estimate(embed(sampler(d), ambient))
    # isotropic data spanning exactly d directions: all d components are needed for 99%
    assert result["pca99"] == d
    assert result["pca90"] <= result["pca95"] <= result["pca99"]
    assert result["pr"] == pytest.approx(d, rel=0.02)
    assert result["effrank"] == pytest.approx(d, rel=0.02)
    assert result["evr1"] == pytest.approx(1 / d, rel=0.15)
    for name in ("twonn", "twonn_mle", "mle"):
        assert result[name] == pytest.approx(d, rel=0.12), name


def test_higher_dimensional_gaussian_nonlinear_estimates():
    result = intrinsic.estimate(embed(gaussian(8), 768))
    assert result["pca99"] == 8
    assert result["twonn"] == pytest.approx(8, rel=0.1)
    assert result["mle"] == pytest.approx(8, rel=0.1)


@pytest.mark.parametrize(
    "points, true_d, linear_d",
    [
        (make_swiss_roll(N, random_state=0)[0], 2, 3),
        (sphere(2), 2, 3),
        (sphere(4), 4, 5),
        (closed_curve(), 1, 12),
    ],
    ids=["swiss_roll", "sphere2", "sphere4", "curve"],
)
def test_curved_manifolds_nonlinear_sees_true_dimension_pca_more(points, true_d, linear_d):
    result = intrinsic.estimate(embed(points, 24))
    for name in ("twonn", "twonn_mle", "mle"):
        assert result[name] == pytest.approx(true_d, rel=0.12), name
    assert result["pca99"] == linear_d
    assert result["pca99"] > result["twonn"] + 0.5


def test_participation_ratio_and_effective_rank_on_known_spectra():
    lam = np.array([[4.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(intrinsic.participation_ratio(lam), [25 / 17, 4.0])
    p = np.array([0.8, 0.2])
    np.testing.assert_allclose(intrinsic.effective_rank(lam), [np.exp(-(p * np.log(p)).sum()), 4.0])
    np.testing.assert_array_equal(intrinsic.pca_dimension(lam, 0.8), [1, 4])
    np.testing.assert_array_equal(intrinsic.pca_dimension(lam, 0.81), [2, 4])
    with pytest.raises(ValueError, match="zero total variance"):
        intrinsic.linear_dimensions(np.zeros((1, 3)))


def test_gram_route_matches_covariance_route_when_dims_exceed_points():
    x = embed(gaussian(6, n=60), 100)
    wide = intrinsic.eigenspectrum(x)  # d=100 > N=60: Gram eigenvalues, zero-padded
    assert wide.shape == (100,)
    np.testing.assert_allclose(wide[:6], np.linalg.eigvalsh(np.cov(x.T))[::-1][:6], rtol=1e-9)
    assert np.all(wide[6:] < 1e-9 * wide[0])


def test_duplicates_are_removed_with_a_warning_and_do_not_change_the_estimate():
    base = embed(gaussian(3, n=800), 24)
    noisy_copies = base[:40] + 1e-12  # near-duplicates
    with_dups = np.concatenate([base, base[:60], noisy_copies])
    with pytest.warns(intrinsic.DuplicatePointsWarning, match="removed 100 duplicate"):
        dup = intrinsic.estimate(with_dups)
    clean = intrinsic.estimate(base)
    assert dup["n_duplicates"] == 100
    for name in ("twonn", "twonn_mle", "mle"):
        assert np.isfinite(dup[name]) and dup[name] > 0
        assert dup[name] == pytest.approx(clean[name], rel=1e-9), name


def test_too_few_distinct_points_is_an_error_not_zero_or_inf():
    x = np.repeat(embed(gaussian(2, n=5), 24), 10, axis=0)
    with pytest.warns(intrinsic.DuplicatePointsWarning), pytest.raises(ValueError, match="distinct points"):
        intrinsic.MLE(k=20).fit(x)


def test_batched_equals_one_cloud_at_a_time_and_row_blocks_equal_full_matrices():
    clouds = np.stack([embed(gaussian(2), 24), embed(cube(4), 24, seed=5), embed(sphere(3), 24, seed=6)])
    clouds[1, 100:110] = clouds[1, :10]  # duplicates in one head only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", intrinsic.DuplicatePointsWarning)
        batched = intrinsic.estimate(clouds)
        blocked = intrinsic.estimate(clouds, memory_bytes=8 * N * 300)  # forces row blocks
        singles = [intrinsic.estimate(c) for c in clouds]
    np.testing.assert_array_equal(batched["n_duplicates"], [0, 10, 0])
    for name in ("pca90", "pca99", "evr1", "pr", "effrank", "twonn", "twonn_mle", "mle"):
        np.testing.assert_allclose(batched[name], [s[name] for s in singles], rtol=1e-10, err_msg=name)
        np.testing.assert_allclose(blocked[name], batched[name], rtol=1e-10, err_msg=name)


def test_estimator_classes_follow_fit_attribute_style():
    x = embed(gaussian(3), 24)
    assert intrinsic.TwoNN().fit(x).dimension_ == pytest.approx(3, rel=0.1)
    assert intrinsic.TwoNN(method="mle").fit(x).dimension_ == pytest.approx(3, rel=0.1)
    assert intrinsic.MLE(k=10).fit(x).dimension_ == pytest.approx(3, rel=0.1)
    lin = intrinsic.LinearDimensions().fit(np.stack([x, x[:, ::-1]]))
    np.testing.assert_array_equal(lin.pca99_, [3, 3])
    assert lin.eigenvalues_.shape == (2, 24)
    with pytest.raises(ValueError, match="discard"):
        intrinsic.TwoNN(discard_fraction=1.0).fit(x)


@pytest.mark.parametrize("ambient", [24, 768])
def test_agrees_with_scikit_dimension(ambient):
    skdim = pytest.importorskip("skdim")
    x = embed(np.concatenate([cube(3, n=700), gaussian(3, n=300) * 0.2]), ambient)
    ours = intrinsic.estimate(x, mle_k=20, twonn_discard=0.1)
    assert ours["twonn"] == pytest.approx(skdim.id.TwoNN(discard_fraction=0.1).fit(x).dimension_, rel=1e-9)
    assert ours["twonn_mle"] == pytest.approx(
        skdim.id.TwoNN(discard_fraction=0.1, method="mle").fit(x).dimension_, rel=1e-9
    )
    assert ours["mle"] == pytest.approx(skdim.id.MLE().fit(x, n_neighbors=20).dimension_, rel=1e-9)

    spread = embed(gaussian(6, n=500) * [3.0, 2.0, 1.0, 0.5, 0.2, 0.1], ambient)
    ours = intrinsic.estimate(spread)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for alpha in (0.90, 0.95, 0.99):
            theirs = skdim.id.lPCA(ver="ratio", alphaRatio=alpha).fit(spread).dimension_
            assert ours[f"pca{round(alpha * 100)}"] == theirs, alpha
    assert (ours["pca90"], ours["pca99"]) == (2, 4)
