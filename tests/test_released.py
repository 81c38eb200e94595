"""`reconstruct: released`: the ResiDual recipes and Spectral-out as the released code computes them
(Flegyas/ResiDual, `src/residual/nn/adapter.py`), against a plain-numpy transcription of that code,
written from reading it, on the stored artefacts and the heads store, for both of its basis branches:

- square (more fitting clips than a unit's dimensions): `inverse_residual_bases = bases.mT`, then
  `einsum("nrk,rkd->nrd")`, which maps the coordinates back with Φᵀ;
- rectangular (fewer): `inv(B Bᵀ) B`, the paper's map.

Two things the transcription fixes where the released code leaves them to LAPACK, both stated where
they are used: each basis row's sign (largest entry positive, the pipeline's convention; the square
branch is not sign-invariant), and the zero-variance rows of a rank-deficient SVD (arbitrary
directions), which are left out.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from residual_audio.core.params import ParamError
from residual_audio.data import synthetic
from residual_audio.data.synthetic import synthetic_store
from residual_audio.data.units import read_units
from residual_audio.evaluation.zeroshot import load_text_side, save_text_side
from test_recipes import _classify, _head, _output, _params, _run

METHODS = ["residual_coarse", "residual_fine", "residual_full", "spectral_out"]


def _world(root, monkeypatch, dim: int | None, **kw):
    if dim is not None:  # a narrow world, so that a fold's fitting clips outnumber a unit's dimensions
        monkeypatch.setattr(synthetic, "DIM", dim)
    text, _ = synthetic_store(root / "data/heads/synthetic.zarr", n_folds=3, seed=2, **kw)
    save_text_side(root / "data/text/synthetic.npz", text)
    return root


def _released(params: dict, methods=METHODS) -> dict:
    params = copy.deepcopy(params)
    params["methods"] = list(methods)
    for r in params["residual"]["recipes"].values():
        r["reconstruct"] = "released"
    params["baselines"]["spectral_out"]["reconstruct"] = "released"
    return params


# ------------------------------------------------------------------ the released code, transcribed in numpy


def pca_fn(x: np.ndarray):
    """`nn/utils.py:pca_fn`: SVD of the centred rows (full_matrices=False): mean, explained variance, Vt."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    variance = s**2 / (len(x) - 1)
    keep = variance > variance.max() * 1e-12  # left out: zero-variance rows, arbitrary directions of LAPACK's
    vt = vt[keep]
    vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]  # the pipeline's sign convention
    return mean, variance[keep], vt


def evr_pruning(variance: np.ndarray, threshold: float) -> int:
    """`EVRPruning` / `get_k_by_evr`: (cumulative EVR > threshold).argmax() + 1; no pruning at threshold 1."""
    if threshold >= 1.0:
        return len(variance)
    evr = np.cumsum(variance / variance.sum())
    return int((evr > threshold).argmax()) + 1


def residual_encode(x: np.ndarray, mean, basis, lam_k, padding: float) -> np.ndarray:
    """`ResiDual.encode` for one unit: λ padded with `component_padding` up to the basis rows, then the
    projection with the scaled basis and the way back with its inverse basis, as the einsums there read."""
    lam = np.concatenate([lam_k, np.full(len(basis) - len(lam_k), padding)])
    inverse = np.linalg.inv(basis @ basis.T) @ basis if basis.shape[0] != basis.shape[1] else basis.T
    coords = np.einsum("nd,kd->nk", x - mean, basis * lam[:, None])
    return np.einsum("nk,kd->nd", coords, inverse)


def recipe_released(store, text, res: dict, fold: str) -> np.ndarray:
    r = res[f"{fold}/recipe"]
    fit, test = res[f"{fold}/train"], res[f"{fold}/test"]
    units = store.units[test].astype(np.float64)
    e = store.const[test].astype(np.float64) + units[:, res[f"{fold}/kept_index"]].sum(1)  # ablation 'sum' or 'zero'
    lam, owner = res[f"{fold}/lam"].astype(np.float64), res[f"{fold}/owner"]
    for u, ui in enumerate(res[f"{fold}/unit_index"]):
        if not r["pca"]:
            e += lam[u] * units[:, ui]  # CoarseAdapter: einsum("nrd,r->nd")
            continue
        mean, variance, basis = pca_fn(store.units[fit, ui].astype(np.float64))
        k = evr_pruning(variance, r["variance"])
        assert k == int((owner == u).sum()), f"{fold}: unit {ui} keeps {int((owner == u).sum())} components, released {k}"
        e += residual_encode(units[:, ui], mean, basis, lam[owner == u], 1.0 if r["beyond"] == "keep" else 0.0)
        if r["add_mean"]:
            e += mean
    return _head(text, e)


def spectral_out_released(store, text, res: dict, fold: str) -> np.ndarray:
    """`SpectralAdapter.forward`: einsum("nd,dk->nk", x − μ, B ⊙ λ[:, None]), then einsum("nk,kd->nd", ·, Bᵀ)."""
    fit, test = res[f"{fold}/train"], res[f"{fold}/test"]
    out_fit, out = _output(text, store.embedding[fit].astype(np.float64)), _output(text, store.embedding[test].astype(np.float64))
    mean = out_fit.mean(0)
    basis = np.linalg.svd(np.vstack([out_fit - mean, np.zeros((out.shape[1], out.shape[1]))]), full_matrices=False)[2]
    lam = res[f"{fold}/lam"].astype(np.float64)  # the square basis the released code needs (any complete one)
    y = np.einsum("nk,kd->nd", np.einsum("nd,dk->nk", out - mean, basis * lam[:, None]), basis.T)
    return _classify(text, y)


def _check(root, runs: dict, square: bool):
    store = read_units(root / "data/heads/synthetic.zarr")
    text = load_text_side(root / "data/text/synthetic.npz")
    for method, res in runs.items():
        for fold in res["folds"]:
            if method == "spectral_out":
                assert str(res[f"{fold}/reconstruct"]) == "released"
                assert len(res[f"{fold}/lam"]) == 512  # one λ per dimension
                ref = spectral_out_released(store, text, res, fold)
            else:
                assert res[f"{fold}/recipe"]["reconstruct"] == "released"
                if res[f"{fold}/recipe"]["pca"]:
                    assert (res[f"{fold}/square"] == square).all(), res[f"{fold}/square"]
                ref = recipe_released(store, text, res, fold)
            np.testing.assert_allclose(res[f"{fold}/logits"], ref, rtol=1e-4, atol=2e-3, err_msg=f"{method} {fold}")


def test_released_rectangular_branch(tmp_path, monkeypatch):
    """Fewer fitting clips (15) than dimensions (768): the released code's (B Bᵀ)⁻¹ B branch."""
    root = _world(tmp_path, monkeypatch, None, n_per_class=6, n_classes=5)
    _check(root, _run(root, monkeypatch, _released(_params()), "results"), square=False)


def test_released_square_branch(tmp_path, monkeypatch):
    """More fitting clips (30) than dimensions (12), full-rank units: the released code's Bᵀ branch."""
    root = _world(tmp_path, monkeypatch, 12, n_per_class=12, n_classes=5, rank=12)
    _check(root, _run(root, monkeypatch, _released(_params()), "results"), square=True)


def test_square_basis_at_lambda_one_is_not_the_unit_but_the_paper_is(tmp_path, monkeypatch):
    """λ = 1 untrained, μ added back, components past the threshold and other units kept: the paper's map
    gives the zero-shot logits back; the released square branch does not ((x − μ) ΦᵀΦᵀ ≠ x − μ)."""
    root = _world(tmp_path, monkeypatch, 12, n_per_class=12, n_classes=5, rank=12)
    params = _params()
    params["methods"] = ["zeroshot", "residual_fine"]
    params["residual"]["recipes"]["fine"].update(lam_init="ones", max_epochs=0, select_from_epoch=0, beyond="keep",
                                                 add_mean=True, others="keep", variance=0.9)
    paper = _run(root, monkeypatch, params, "paper")
    released = _run(root, monkeypatch, _released(params, ["residual_fine"]), "released")["residual_fine"]
    for fold in paper["zeroshot"]["folds"]:
        zs = paper["zeroshot"][f"{fold}/logits"]
        np.testing.assert_allclose(paper["residual_fine"][f"{fold}/logits"], zs, rtol=1e-5, atol=1e-4)
        assert np.abs(released[f"{fold}/logits"] - zs).max() > 1e-2


def test_inject_refuses_released(tmp_path):
    from residual_audio.core.schema import validate
    from residual_audio.methods.residual.inject import ResidualInject

    params = _params()
    params["residual"]["recipes"]["identity"]["reconstruct"] = "released"
    with pytest.raises(ParamError, match=r"residual\.recipes\.identity\.reconstruct"):
        validate(params)
        ResidualInject.from_params(params)
