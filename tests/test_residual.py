"""ResiDual's math, direct-mode training and the protocol, on synthetic stores with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from residual_audio.core.params import ParamError
from residual_audio.data.synthetic import in_memory_store, synthetic_store, synthetic_world
from residual_audio.data.units import StoreError, read_units
from residual_audio.evaluation.protocol import make_splits, outer_folds
from residual_audio.methods import build
from residual_audio.methods.residual.maths import RECIPES, fit_bases, rd, unit_pca


@pytest.fixture(scope="module")
def world():
    arrays, attrs, text, truth = synthetic_world(n_per_class=12, n_classes=6, n_folds=3, seed=1)
    return in_memory_store(arrays, attrs), text, truth


@pytest.fixture(scope="module")
def split(world):
    store, _, _ = world
    return make_splits(store.label, store.fold, "official", 3, 0, 0.2)[0]


def test_rd_equals_projection_form_with_a_full_basis():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8))
    mu, ev, phi = unit_pca(x)
    assert phi.shape == (8, 8) and np.allclose(phi @ phi.T, np.eye(8), atol=1e-10)
    lam = torch.from_numpy(rng.uniform(0, 2, 8))
    xt, phit, mut = torch.from_numpy(x), torch.from_numpy(phi), torch.from_numpy(mu)
    paper = (xt - mut) @ phit.T * lam @ phit + mut  # Φᵀ diag(λ) Φ (x − μ) + μ
    assert torch.allclose(rd(xt, phit, mut, lam), paper, atol=1e-10)
    assert torch.equal(rd(xt, phit, mut, torch.ones(8, dtype=torch.float64)), xt)


def test_gram_route_matches_covariance_pca():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 12)) @ rng.standard_normal((12, 12))
    mu, ev, phi = unit_pca(x)  # n < D: Gram route
    cov = np.cov(x.T)
    ref = np.linalg.eigvalsh(cov)[::-1][: len(ev)]
    assert np.allclose(ev, ref) and len(ev) == 4
    assert np.allclose(phi @ cov @ phi.T, np.diag(ev), atol=1e-9)


def _fold(store, text, split, seed=0):
    from residual_audio.methods import FoldData

    return FoldData(store, text, split, seed=seed)


def _recipe(name="identity", **fields):
    from dataclasses import replace

    from residual_audio.methods.residual.recipes import REGISTRY_RECIPES

    cls = REGISTRY_RECIPES[name]
    return cls(replace(RECIPES[name], **fields))


def test_only_lambda_is_trained_and_the_head_stays_frozen(world, split):
    store, text, _ = world
    head_before = {k: np.copy(v) for k, v in text.projection.items()}
    est = _recipe("identity", max_epochs=3, lr=0.05).fit(_fold(store, text, split))
    assert [n for n, p in est.model_.named_parameters() if p.requires_grad] == ["lam"]
    assert not est.model_.training
    assert all(np.array_equal(head_before[k], v) for k, v in text.projection.items())
    assert not np.array_equal(est.lam_, est.lam_init_)  # it did learn


def test_training_switches_off_nuisance_heads_and_beats_zero_shot(world, split):
    store, text, truth = world
    data = _fold(store, text, split)
    zs = build("zeroshot", {}).fit(data).logits(data, split.test)
    est = _recipe("identity", max_epochs=30, lr=0.05, batch_size=16).fit(data)
    y = store.label[split.test]
    acc_zs, acc_rd = (zs.argmax(1) == y).mean(), (est.logits(data, split.test).argmax(1) == y).mean()
    assert acc_zs < 0.9 and acc_rd > acc_zs + 0.1
    lam, owner, names = est.lam_, est.bases_.owner, est.bases_.unit_names
    nuisance = [names.index(u) for u in truth["nuisance_units"]]
    signal = [names.index(u) for u in truth["signal_units"]]
    assert np.abs(lam[np.isin(owner, nuisance)]).mean() < 0.5
    assert lam[np.isin(owner, signal)].mean() > 1.0


def test_non_finite_units_are_a_clear_error(world, split):
    store, text, _ = world
    bad = in_memory_store({"direct/units": store.units.copy(), "direct/const": store.const, "embedding": store.embedding,
                           "label": store.label, "fold": store.fold, "audio_embed": store.audio_embed},
                          {**store.attrs, "units": store.unit_names, "classes": store.classes})
    bad.units[split.train[0], store.select("heads")[0]] = np.inf
    with pytest.raises(StoreError, match="non-finite direct contribution of layers.0.blocks.0.attn.head0"):
        _recipe("identity", max_epochs=2, lr=0.05).fit(_fold(bad, text, split))


def test_untrained_identity_maps_are_zero_shot(world, split):
    """Linear (W = I, b = 0) and the adapter (W = I) at 0 epochs score like zero-shot."""
    store, text, _ = world
    data = _fold(store, text, split)
    zs = build("zeroshot", {}).fit(data).logits(data, split.test)
    params = {"train": {"max_epochs": 0}, "baselines": {"linear": {"init": "identity"}}}
    for name in ("linear", "linear_adapter"):
        np.testing.assert_allclose(build(name, params).fit(data).logits(data, split.test), zs, atol=1e-4)


def test_protocol_folds_and_bad_splits():
    labels = np.repeat(np.arange(5), 4)
    folds = np.tile([1, 2, 3, 4], 5)
    official = outer_folds(labels, folds, "official", 2, 0)
    assert [name for name, _, _ in official] == ["fold1", "fold2", "fold3", "fold4"]
    assert all((folds[te] == int(name[4:])).all() for name, _, te in official)
    with pytest.warns(UserWarning, match="cv.k"):
        single = outer_folds(labels, np.full(20, 4), "official", 2, 0)
    assert len(single) == 2
    again = outer_folds(labels, np.full(20, 4), "stratified", 2, 0)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(single, again))  # seeded
    # tiny smoke protocol: 4 clips per class, k=2 — the validation split is too small to stratify
    with pytest.warns(UserWarning, match="too small to stratify"):
        splits = make_splits(labels, folds, "stratified", 2, 0, 0.1)
    assert len(splits) == 2
    with pytest.raises(ParamError, match="cv.k"):
        outer_folds(labels, folds, "stratified", 5, 0)
    with pytest.raises(ParamError, match="cv.scheme"):
        make_splits(labels, np.where(labels == 0, 1, folds), "official", 2, 0, 0.1)  # class 0 only in fold 1
    with pytest.raises(ParamError, match="at least two"):
        make_splits(np.zeros(8, int), np.tile([1, 2], 4), "official", 2, 0, 0.1)
    with pytest.raises(ParamError, match="cv.scheme"):
        outer_folds(labels, folds, "random", 2, 0)


@pytest.mark.parametrize("layers", [[], [4], [0, 0], [-1], ["0"]])
def test_bad_inject_layers_are_refused_by_the_schema(layers):
    from residual_audio.core.schema import validate

    with pytest.raises(ParamError, match="inject_layers"):
        validate({"inject_layers": layers})


def test_store_reader_checks_the_exact_sum(tmp_path):
    synthetic_store(tmp_path / "s.zarr", n_per_class=2, n_classes=3)
    store = read_units(tmp_path / "s.zarr")
    assert store.units.shape == (6, 197, 768) and len(store.select("heads")) == 184 and len(store.select("heads+mlp")) == 196
    assert fit_bases(store.units, store.select("heads")[:3], store.unit_names, 1.0).components.shape == (15, 768)
    import zarr

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    g["direct/const"][0, 0] = 5.0
    with pytest.raises(StoreError, match="direct/const"):
        read_units(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="not found"):
        read_units(tmp_path / "missing.zarr")


def test_a_dataset_without_folds_is_not_said_to_have_one():
    import warnings

    from residual_audio.evaluation.protocol import outer_folds

    labels = np.repeat(np.arange(3), 4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outer_folds(labels, np.zeros(12, np.int64), "official", 2, 0)
        outer_folds(labels, np.full(12, 4), "official", 2, 0)
    messages = [str(w.message) for w in seen]
    assert "hold no official folds; using 2 stratified folds" in messages[0]
    assert "hold 1 official fold;" in messages[1]
