"""Every method through the train stage, checked against plain-numpy re-derivations of the
published formulas from the saved artefacts, the heads store and the text cache."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from residual_audio.core.params import ParamError
from residual_audio.data.synthetic import synthetic_store
from residual_audio.data.units import read_units
from residual_audio.evaluation import results as al
from residual_audio.evaluation.zeroshot import load_text_side, save_text_side
from conftest import checked

REPO = Path(__file__).resolve().parents[1]
RECIPE_METHODS = ("residual_coarse", "residual_fine", "residual_full", "residual_identity", "residual_fine_unlabelled")


def _params(**top) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(**top)
    params["cv"].update(scheme="official", val_fraction=0.25)
    for r in params["residual"]["recipes"].values():
        r["max_epochs"] = 3
    params["train"]["max_epochs"] = 3
    params["baselines"]["linear_adapter"]["lr"] = [0.01]
    params["residual"]["recipes"]["identity"]["lr"] = [0.01, 0.05]
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A synthetic heads store (3 official folds, 5 classes) and its text cache."""
    root = tmp_path_factory.mktemp("recipes")
    text, truth = synthetic_store(root / "data/heads/synthetic.zarr", n_per_class=6, n_classes=5, n_folds=3, seed=2)
    save_text_side(root / "data/text/synthetic.npz", text)
    return root


def _run(project: Path, monkeypatch, params: dict, out: str) -> dict:
    from residual_audio.stages.train import train_dataset

    monkeypatch.chdir(project)
    monkeypatch.setattr("residual_audio.stages.train.RESULTS_DIR", Path(out))
    train_dataset(params, "synthetic")
    return {m: al.load_results(Path(out) / "synthetic" / f"{m}.npz", finite=False) for m in params["methods"]}


@pytest.fixture(scope="module")
def default_run(project):
    mp = pytest.MonkeyPatch()
    try:
        params = _params(methods=list(al.DEFAULT_METHODS))
        yield _run(project, mp, params, "results_default")
    finally:
        mp.undo()


# --------------------------------------------------------------------------- plain-numpy references


def _head(text, e: np.ndarray, normalise_input=False) -> np.ndarray:
    """scale · normalise(W₂ ReLU(W₁ e + b₁) + b₂) · classesᵀ, in float64."""
    p = {k: v.astype(np.float64) for k, v in text.projection.items() if k != "kind"}
    out = np.maximum(e @ p["w1"].T + p["b1"], 0) @ p["w2"].T + p["b2"]
    return _classify(text, out)


def _classify(text, out: np.ndarray) -> np.ndarray:
    out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return text.logit_scale * out @ text.class_embeddings.astype(np.float64).T


def _output(text, e):
    p = {k: v.astype(np.float64) for k, v in text.projection.items() if k != "kind"}
    return np.maximum(e @ p["w1"].T + p["b1"], 0) @ p["w2"].T + p["b2"]


def recipe_reference(store, text, res: dict, fold: str) -> np.ndarray:
    """e' = const + Σ_kept x_u + Σ_reweighted f_u(x_u), f_u from the paper's formulas, then CLAP's head."""
    r = res[f"{fold}/recipe"]
    idx = res[f"{fold}/test"]
    units = store.units[idx].astype(np.float64)
    e = store.const[idx].astype(np.float64) + units[:, res[f"{fold}/kept_index"]].sum(1)
    if r["others"] == "mean":  # every other unit as its mean over the fitting clips
        rest = np.setdiff1d(np.arange(len(store.unit_names)), res[f"{fold}/unit_index"])
        e += store.units[np.sort(res[f"{fold}/train"])][:, rest].astype(np.float64).mean(0).sum(0)
    lam, owner = res[f"{fold}/lam"].astype(np.float64), res[f"{fold}/owner"]
    for u, ui in enumerate(res[f"{fold}/unit_index"]):
        x = units[:, ui]
        if not r["pca"]:
            e += lam[u] * x  # coarse: Σ λ_h x_h on the uncentred contribution
            continue
        phi, mu = res[f"{fold}/components"][owner == u].astype(np.float64), res[f"{fold}/means"][u].astype(np.float64)
        coef = (x - mu) @ phi.T
        e += (coef * lam[owner == u]) @ phi  # Φᵀ diag(λ) Φ (x − μ)
        if r["beyond"] == "keep":
            e += (x - mu) - coef @ phi  # the components past the threshold, unchanged
        if r["add_mean"]:
            e += mu
    return _head(text, e)


@pytest.mark.parametrize("method", RECIPE_METHODS)
def test_recipe_logits_recomputed_from_the_artefacts(project, default_run, method):
    store = read_units(project / "data/heads/synthetic.zarr")
    text = load_text_side(project / "data/text/synthetic.npz")
    res = default_run[method]
    assert list(res["folds"]) == ["fold1", "fold2", "fold3"]
    for fold in res["folds"]:
        reference = recipe_reference(store, text, res, fold)
        np.testing.assert_allclose(res[f"{fold}/logits"], reference, rtol=1e-4, atol=2e-3)
        # the pooled array (what evaluate scores) holds the same fold's clips at their test indices
        np.testing.assert_allclose(res["logits"][res[f"{fold}/test"]], reference, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("fields", [
    {"beyond": "keep", "add_mean": True, "others": "remove", "variance": 0.8},
    {"units": "heads+mlp", "beyond": "keep", "add_mean": False, "others": "keep", "lam_init": "ones", "variance": 0.95},
    {"pca": False, "others": "keep"},
    {"others": "mean"},
    {"pca": False, "others": "mean"},
])
def test_recipe_variants_recomputed_from_the_artefacts(project, monkeypatch, fields):
    """Every branch of the map (components past the threshold kept, μ added back, units kept or
    removed, MLPs reweighted) against the plain-numpy formula, on a variant of `fine`."""
    params = _params(methods=["residual_fine"], inject_layers=[1, 3])
    params["residual"]["recipes"]["fine"].update(fields)
    res = _run(project, monkeypatch, params, "results_variant")["residual_fine"]
    store = read_units(project / "data/heads/synthetic.zarr")
    text = load_text_side(project / "data/text/synthetic.npz")
    for fold in res["folds"]:
        assert {n.split(".")[1] for n in res[f"{fold}/unit_names"]} == {"1", "3"}
        np.testing.assert_allclose(res[f"{fold}/logits"], recipe_reference(store, text, res, fold), rtol=1e-4, atol=2e-3)


def test_recipes_follow_the_paper(project, default_run):
    store = read_units(project / "data/heads/synthetic.zarr")
    heads = [n for n in store.unit_names if ".attn.head" in n]
    mlps = [n for n in store.unit_names if n.endswith(".mlp")]
    for method in ("residual_coarse", "residual_fine", "residual_full", "residual_identity"):
        res = default_run[method]
        for fold in res["folds"]:
            names = list(res[f"{fold}/unit_names"])
            kept = [store.unit_names[i] for i in res[f"{fold}/kept_index"]]
            chosen = set(heads) | (set(mlps) if method == "residual_full" else set())
            assert names == [n for n in store.unit_names if n in chosen]
            assert kept == ([] if method in ("residual_coarse", "residual_fine") else
                            [n for n in store.unit_names if n not in names])
            # λ init: 1 + N(0, 1) seeded for the paper's recipes, ones for ours
            init = res[f"{fold}/lam_init"]
            assert np.array_equal(init, np.ones_like(init)) == (method == "residual_identity")
    # coarse: one λ per head, no basis
    coarse = default_run["residual_coarse"]
    assert all(len(coarse[f"{f}/lam"]) == len(heads) and coarse[f"{f}/components"].shape[0] == 0 for f in coarse["folds"])
    # fine keeps the components reaching 90 % explained variance of each head's training clips, no fewer
    fine = default_run["residual_fine"]
    for fold in fine["folds"]:
        train = fine[f"{fold}/train"]
        for u, ui in enumerate(fine[f"{fold}/unit_index"][:5]):
            ev = np.linalg.svd(store.units[train, ui] - store.units[train, ui].mean(0), compute_uv=False) ** 2
            ratio = np.cumsum(ev) / ev.sum()
            k = int((fine[f"{fold}/owner"] == u).sum())
            assert ratio[k - 1] >= 0.9 - 1e-6 and (k == 1 or ratio[k - 2] < 0.9)


def test_bases_are_fitted_on_the_fitting_clips_or_the_unlabelled_ones(project, default_run):
    """μ and the PCA span equal numpy's on the chosen clip set (fitting clips only, or the whole training side)."""
    store = read_units(project / "data/heads/synthetic.zarr")
    for method, clips in (("residual_fine", lambda r, f: r[f"{f}/train"]),
                          ("residual_fine_unlabelled", lambda r, f: np.union1d(r[f"{f}/train"], r[f"{f}/val"]))):
        res = default_run[method]
        for fold in res["folds"]:
            idx = clips(res, fold)
            assert not set(idx) & set(res[f"{fold}/test"])
            for u, ui in enumerate(res[f"{fold}/unit_index"][:4]):
                x = store.units[idx, ui].astype(np.float64)
                np.testing.assert_allclose(res[f"{fold}/means"][u], x.mean(0), atol=1e-6)
                phi = res[f"{fold}/components"][res[f"{fold}/owner"] == u].astype(np.float64)
                _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
                ref = vt[: len(phi)]
                # same subspace: projecting numpy's components onto ours loses nothing
                np.testing.assert_allclose(np.linalg.norm(ref @ phi.T, axis=1), 1.0, atol=1e-4)


def test_baseline_logits_recomputed_from_the_artefacts(project, default_run):
    store = read_units(project / "data/heads/synthetic.zarr")
    text = load_text_side(project / "data/text/synthetic.npz")
    for fold in default_run["zeroshot"]["folds"]:
        idx = default_run["zeroshot"][f"{fold}/test"]
        e = store.embedding[idx].astype(np.float64)
        out = _output(text, e)
        checks = {"zeroshot": _classify(text, out)}
        lin = default_run["linear"]
        checks["linear"] = _classify(text, out @ lin[f"{fold}/weight"].T + lin[f"{fold}/bias"])
        so = default_run["spectral_out"]
        coef = (out - so[f"{fold}/mean"]) @ so[f"{fold}/components"].T
        checks["spectral_out"] = _classify(text, (coef * so[f"{fold}/lam"]) @ so[f"{fold}/components"])
        ad = default_run["linear_adapter"]
        checks["linear_adapter"] = _classify(text, (out / np.linalg.norm(out, axis=1, keepdims=True)) @ ad[f"{fold}/weight"].T)
        pr = default_run["linear_probe"]
        checks["linear_probe"] = (out / np.linalg.norm(out, axis=1, keepdims=True)) @ pr[f"{fold}/coef"].T + pr[f"{fold}/intercept"]
        for method, ref in checks.items():
            np.testing.assert_allclose(default_run[method][f"{fold}/logits"], ref, rtol=1e-4, atol=2e-3, err_msg=method)


def test_probe_is_fitted_on_the_fitting_clips_with_C_chosen_on_validation(project, default_run):
    from sklearn.linear_model import LogisticRegression

    store = read_units(project / "data/heads/synthetic.zarr")
    text = load_text_side(project / "data/text/synthetic.npz")
    pr = default_run["linear_probe"]
    fold = str(pr["folds"][0])
    tr = pr[f"{fold}/train"]
    out = _output(text, store.embedding[tr].astype(np.float64))
    x = (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)
    ref = LogisticRegression(C=float(pr[f"{fold}/C"]), max_iter=2000, random_state=0).fit(x, store.label[tr])
    np.testing.assert_allclose(pr[f"{fold}/coef"], ref.coef_, atol=1e-4)
    scores = {h["C"]: h["val_acc"] for h in pr[f"{fold}/history"]}
    assert scores[float(pr[f"{fold}/C"])] == max(scores.values())


def test_identity_at_zero_epochs_is_zero_shot_bit_for_bit_and_fine_is_not(project, monkeypatch):
    params = _params(methods=["zeroshot", "residual_identity", "residual_fine"])
    for r in params["residual"]["recipes"].values():
        r["max_epochs"] = 0
    res = _run(project, monkeypatch, params, "results_zero")
    # identity's untrained map adds an exact zero, but it scores in batches of EVAL_BATCH and zero-shot
    # in one: float32 matmuls regrouped by batch shape may differ by a few ulps, hence 1e-5 (fine's
    # random λ moves them by more than 1e-2, checked next)
    np.testing.assert_allclose(res["residual_identity"]["logits"], res["zeroshot"]["logits"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(res["residual_fine"]["logits"], res["zeroshot"]["logits"], atol=1e-2)
    # the paper's random init is seeded: a rerun gives the same λ
    again = _run(project, monkeypatch, params, "results_zero_again")
    assert np.array_equal(again["residual_fine"]["fold1/lam"], res["residual_fine"]["fold1/lam"])


def test_inject_layers_selects_the_reweighted_stages(project, default_run, monkeypatch):
    params = _params(methods=["residual_fine", "residual_identity"], inject_layers=[0])
    res = _run(project, monkeypatch, params, "results_stage0")
    for method in params["methods"]:
        one, every = res[method], default_run[method]
        assert all(n.startswith("layers.0.") for f in one["folds"] for n in one[f"{f}/unit_names"])
        assert one["params"].tolist() != every["params"].tolist() and (one["params"] < every["params"]).all()
        assert not np.allclose(one["logits"], every["logits"])


def test_bases_leak_test_through_the_stage(project, monkeypatch, tmp_path):
    """Test-fold clips set to NaN: every artefact of that fold is unchanged and finite; only its logits are NaN."""
    from residual_audio.data.synthetic import synthetic_world, write_store
    from residual_audio.stages import common

    arrays, attrs, text, _ = synthetic_world(n_per_class=6, n_classes=5, n_folds=3, seed=2)
    poisoned = copy.deepcopy(arrays)
    test = arrays["fold"] == 1
    for key in ("direct/units", "direct/const", "embedding"):
        poisoned[key][test] = np.nan
    write_store(tmp_path / "data/heads/synthetic.zarr", poisoned, attrs)
    save_text_side(tmp_path / "data/text/synthetic.npz", text)
    from residual_audio.evaluation.tasks import Classification

    every = Classification.splits
    monkeypatch.setattr(Classification, "splits", lambda self, store, p, **kw: [
        s for s in every(self, store, p, **kw) if s.name == "fold1"])
    monkeypatch.setattr(common, "read_units", lambda path: read_units(path, check_sum=False, finite=False))
    methods = ["residual_fine", "residual_identity", "spectral_out", "linear_probe"]
    res = _run(tmp_path, monkeypatch, _params(methods=methods), "results_poisoned")
    clean = _run(project, monkeypatch, _params(methods=methods), "results_clean")
    for method in methods:
        assert np.isnan(res[method]["fold1/logits"]).all()
        for key in ("means", "components", "lam", "mean", "coef"):
            if f"fold1/{key}" in res[method]:
                assert np.isfinite(res[method][f"fold1/{key}"]).all()
                np.testing.assert_allclose(res[method][f"fold1/{key}"], clean[method][f"fold1/{key}"], atol=1e-5)


def test_bad_methods_and_recipe_fields_name_the_key(project, monkeypatch):
    from residual_audio.stages.train import train_dataset

    monkeypatch.chdir(project)
    bad = [({"methods": ["nope"]}, "methods"), ({"methods": []}, "methods"),
           ({"inject_layers": [5]}, "inject_layers")]
    for top, key in bad:
        with pytest.raises(ParamError, match=key):
            checked(train_dataset, _params(**top), "synthetic")
    for field, value in (("variance", 0), ("lam_init", "zeros"), ("others", "drop"), ("lr", -1), ("select_on", "loss"), ("colour", 1)):
        params = _params(methods=["residual_fine"])
        params["residual"]["recipes"]["fine"][field] = value
        with pytest.raises(ParamError, match=rf"residual\.recipes\.fine\.{field}"):
            checked(train_dataset, params, "synthetic")
    params = _params(methods=["residual_fine"])
    params["residual"]["bases_on"] = "test"
    with pytest.raises(ParamError, match="residual.bases_on"):
        checked(train_dataset, params, "synthetic")
    assert not (project / "data/results").exists()


def test_identity_equals_zero_shot_bit_for_bit_beyond_one_chunk():
    """More test clips than one first-layer chunk (256): still the same products, the same bits."""
    from dataclasses import replace

    from residual_audio.data.synthetic import in_memory_store, synthetic_world
    from residual_audio.evaluation.protocol import Split
    from residual_audio.methods import FoldData, build
    from residual_audio.methods.residual.maths import RECIPES
    from residual_audio.methods.residual.recipes import REGISTRY_RECIPES

    arrays, attrs, text, _ = synthetic_world(n_per_class=64, n_classes=5, n_folds=2, seed=4)
    store = in_memory_store(arrays, attrs)
    idx = np.random.default_rng(0).permutation(store.n)
    data = FoldData(store, text, Split("fold0", np.sort(idx[:30]), np.sort(idx[30:40]), np.sort(idx[40:])))
    zs = build("zeroshot", {}).fit(data).logits(data, data.split.test)
    ident = REGISTRY_RECIPES["identity"](replace(RECIPES["identity"], max_epochs=0)).fit(data)
    assert len(data.split.test) > 256  # more than one scoring batch; regrouped float32 sums: see above
    np.testing.assert_allclose(ident.logits(data, data.split.test), zs, rtol=1e-5, atol=1e-5)
