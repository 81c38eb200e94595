"""ResiDual's math, direct-mode training and the protocol, on synthetic stores with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from residual_audio import alignment as al
from residual_audio.params import ParamError
from residual_audio.protocol import make_splits, outer_folds
from residual_audio.residual import DirectResiDual, check_mode, coefficients, dropped_part, fit_bases, rd, unit_pca
from residual_audio.synthetic import in_memory_store, synthetic_store, synthetic_world
from residual_audio.training import TrainConfig, train
from residual_audio.units import StoreError, read_units
from residual_audio.zeroshot import FrozenHead, zeroshot_logits


@pytest.fixture(scope="module")
def world():
    arrays, attrs, text, truth = synthetic_world(n_per_class=12, n_classes=6, n_folds=3, seed=1)
    return in_memory_store(arrays, attrs), text, truth


@pytest.fixture(scope="module")
def split(world):
    store, _, _ = world
    return make_splits(store.label, store.fold, "official", 3, 0, 0.2)[0]


@pytest.fixture(scope="module")
def bases(world, split):
    store, _, _ = world
    return fit_bases(store.units[split.train_all], store.select("heads"), store.unit_names, 0.95)


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


def test_untrained_residual_is_exactly_zero_shot(world, bases):
    store, text, _ = world
    model = DirectResiDual(FrozenHead(text), bases)
    pre, coef = model.features(store.units, store.embedding)
    with torch.no_grad():
        logits = model(pre, coef).numpy()
    assert np.array_equal(logits, zeroshot_logits(store.embedding, text))


@pytest.mark.parametrize("beyond", ["keep", "drop"])
def test_direct_mode_equals_explicit_per_unit_reweighting(world, bases, beyond):
    store, text, _ = world
    model = DirectResiDual(FrozenHead(text), bases)
    with torch.no_grad():
        model.lam.copy_(torch.from_numpy(np.random.default_rng(2).uniform(0, 2, len(bases.owner)).astype(np.float32)))
    clips = slice(0, 10)
    units = store.units[clips].astype(np.float64)
    expected = store.const[clips].astype(np.float64) + units.sum(1)
    lam = model.lam.detach().double().numpy()
    for u, sl in enumerate(bases.unit_slices()):
        x, mu, phi = units[:, bases.unit_index[u]], bases.means[u].astype(np.float64), bases.components[sl].astype(np.float64)
        if beyond == "keep":
            new = x + ((x - mu) @ phi.T * (lam[sl] - 1)) @ phi
        else:
            new = ((x - mu) @ phi.T * lam[sl]) @ phi + mu  # the paper's form, components past the threshold dropped
        expected += new - x
    pre, coef = model.features(store.units[clips], store.embedding[clips], beyond)
    with torch.no_grad():
        corrected = model.corrected_embedding(torch.from_numpy(store.embedding[clips]), coef).double().numpy()
        if beyond == "drop":
            corrected -= dropped_part(store.units[clips], bases)
        assert np.allclose(corrected, expected, atol=2e-4)
        head = model.head
        ref = head(head.pre(torch.from_numpy(expected.astype(np.float32))))
        assert torch.allclose(model(pre, coef), ref, atol=1e-3)


def test_only_lambda_is_trained_and_the_model_stays_frozen(world, split, bases):
    store, text, _ = world
    head = FrozenHead(text)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    model = DirectResiDual(head, bases)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["lam"]
    feats = model.features(store.units[split.train], store.embedding[split.train])
    loss = torch.nn.functional.cross_entropy(model(*feats), torch.from_numpy(store.label[split.train]))
    loss.backward()
    assert model.lam.grad is not None and model.lam.grad.abs().sum() > 0
    assert all(b.grad is None for b in model.buffers())
    train(model, feats, store.label[split.train], model.features(store.units[split.val], store.embedding[split.val]),
          store.label[split.val], TrainConfig(max_epochs=3, lr=0.05))
    assert not model.training and all(torch.equal(before[k], v) for k, v in head.state_dict().items())


def test_zero_epochs_give_exactly_the_zero_shot_result(world, split, bases):
    store, text, _ = world
    zs = al.run_zeroshot(store, split, text)
    rd0 = al.run_residual(store, split, text, bases, TrainConfig(max_epochs=0))
    assert np.array_equal(zs.logits, rd0.logits)
    assert np.array_equal(rd0.extra["lam"], np.ones(len(bases.owner), dtype=np.float32))


def test_training_switches_off_nuisance_heads_and_beats_zero_shot(world, split, bases):
    store, text, truth = world
    zs = al.run_zeroshot(store, split, text)
    res = al.run_residual(store, split, text, bases, TrainConfig(max_epochs=30, lr=0.05, batch_size=16))
    y = store.label[split.test]
    acc_zs, acc_rd = (zs.logits.argmax(1) == y).mean(), (res.logits.argmax(1) == y).mean()
    assert acc_zs < 0.9 and acc_rd > acc_zs + 0.1
    lam, owner = res.extra["lam"], res.extra["owner"]
    nuisance = [bases.unit_names.index(u) for u in truth["nuisance_units"]]
    signal = [bases.unit_names.index(u) for u in truth["signal_units"]]
    assert np.abs(lam[np.isin(owner, nuisance)]).mean() < 0.5
    assert lam[np.isin(owner, signal)].mean() > 1.0
    assert res.params == len(bases.owner)


def test_no_test_clip_reaches_bases_means_or_early_stopping(world):
    store, text, _ = world
    for split in make_splits(store.label, store.fold, "official", 3, 0, 0.2):
        assert not set(split.test) & set(split.train_all) and not set(split.val) & set(split.test)
        poisoned = in_memory_store({"direct/units": store.units.copy(), "direct/const": store.const, "embedding": store.embedding.copy(),
                                    "label": store.label, "fold": store.fold, "audio_embed": store.audio_embed},
                                   {**store.attrs, "units": store.unit_names, "classes": store.classes})
        poisoned.units[split.test] = np.nan
        poisoned.embedding[split.test] = np.nan
        b_clean = fit_bases(store.units[split.train_all], store.select("heads"), store.unit_names, 0.9)
        b_pois = fit_bases(poisoned.units[split.train_all], poisoned.select("heads"), poisoned.unit_names, 0.9)
        assert np.array_equal(b_clean.means, b_pois.means) and np.array_equal(b_clean.components, b_pois.components)
        # training and early stopping never see a test clip: with NaN there, they would fail (NaN loss)
        res = al.run_residual(poisoned, split, text, b_pois, TrainConfig(max_epochs=4, lr=0.05))
        assert np.isfinite(res.extra["lam"]).all() and np.isnan(res.logits).all()
        clean = al.run_residual(store, split, text, b_clean, TrainConfig(max_epochs=4, lr=0.05))
        assert np.array_equal(clean.extra["lam"], res.extra["lam"])
        break


def test_nan_loss_is_a_clear_error_naming_the_key(world, split, bases):
    store, text, _ = world
    bad = in_memory_store({"direct/units": store.units.copy(), "direct/const": store.const, "embedding": store.embedding,
                           "label": store.label, "fold": store.fold, "audio_embed": store.audio_embed},
                          {**store.attrs, "units": store.unit_names, "classes": store.classes})
    bad.units[split.train[0], bases.unit_index[0]] = np.inf
    with pytest.raises(ParamError, match="train.lr"):
        al.run_residual(bad, split, text, bases, TrainConfig(max_epochs=2))


def test_baselines_run_on_the_same_folds(world, split):
    store, text, _ = world
    probe = al.run_probe(store, split, text)
    adapter = al.run_adapter(store, split, text, TrainConfig(max_epochs=2, lr=0.01))
    y = store.label[split.test]
    assert probe.logits.shape == adapter.logits.shape == (len(split.test), len(store.classes))
    assert (probe.logits.argmax(1) == y).mean() > 1 / len(store.classes)
    assert probe.params == len(store.classes) * 513 and adapter.params == 512 * 512
    zero = al.run_adapter(store, split, text, TrainConfig(max_epochs=0))
    assert np.allclose(zero.logits, al.run_zeroshot(store, split, text).logits, atol=1e-5)


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


@pytest.mark.parametrize("mode, layers, key", [("nope", [0], "residual.mode"), ("direct", [], "inject_layers"),
                                                ("inject", [4], "inject_layers"), ("direct", [0, 0], "inject_layers")])
def test_bad_mode_or_inject_layers(mode, layers, key):
    with pytest.raises(ParamError, match=key):
        check_mode(mode, layers)


def test_store_reader_checks_the_exact_sum(tmp_path):
    synthetic_store(tmp_path / "s.zarr", n_per_class=2, n_classes=3)
    store = read_units(tmp_path / "s.zarr")
    assert store.units.shape == (6, 197, 768) and len(store.select("heads")) == 184 and len(store.select("heads+mlp")) == 196
    assert np.allclose(coefficients(store.units, fit_bases(store.units, store.select("heads")[:3], store.unit_names, 1.0)).shape, (6, 15))
    import zarr

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    g["direct/const"][0, 0] = 5.0
    with pytest.raises(StoreError, match="direct/const"):
        read_units(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="not found"):
        read_units(tmp_path / "missing.zarr")
