"""`residual_inject` against independent references: scikit-learn's PCA of the gathered tokens,
and the same map applied with PyTorch hooks on LAION's own modules run through LAION's forward."""

from __future__ import annotations

import dataclasses
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from tiny_project import CLASSES, noise_mel, text_side

from residual_audio.core.params import ParamError
from residual_audio.evaluation.protocol import Split
from residual_audio.evaluation.zeroshot import zeroshot_logits
from residual_audio.methods import FoldData, build
from residual_audio.methods.residual.inject import ResidualInject
from residual_audio.methods.residual.maths import RECIPES
from residual_audio.models.hooked import HookedHTSAT
from residual_audio.models.laion import audio_embedding_from_mel

N = 6
SPLIT = Split("fold0", np.arange(0, 4), np.arange(4, 5), np.arange(5, 6))


@pytest.fixture(scope="module")
def hooked(model):
    return HookedHTSAT(model)


@pytest.fixture(scope="module")
def clips(model):
    mel, label = noise_mel(model, N)
    with torch.no_grad():
        plain = audio_embedding_from_mel(model, mel)["embedding"]
    return dict(mel=mel, label=label, text=text_side(model), plain=plain)


def fold(hooked, clips, context=None) -> FoldData:
    store = SimpleNamespace(label=clips["label"], classes=CLASSES)
    ctx = dict(hooked=hooked, device=torch.device("cpu"), mel=clips["mel"].numpy()) if context is None else context
    return FoldData(store=store, text=clips["text"], split=SPLIT, seed=5, context=ctx)


def fitted(hooked, clips, recipe, granularity, stages, micro_batch=4, context=None):
    est = ResidualInject(recipe=recipe, granularity=granularity, stages=stages, device="cpu", micro_batch=micro_batch)
    data = fold(hooked, clips, context)
    return est.fit(data), data


def untrained(name, **changes):
    return dataclasses.replace(RECIPES[name], max_epochs=0, **changes)


# --------------------------------------------------------------------------- reference maps (plain torch, from artefacts)


def reference_map(art: dict, unit: int):
    """x ↦ [μ] + Φᵀ diag(λ) Φ (x − μ) + [(I − ΦᵀΦ)(x − μ)] for one unit, from the saved artefacts (float64)."""
    width = int(art["widths"][unit])
    rows = art["owner"] == unit
    mu = torch.from_numpy(art["means"][unit, :width]).double()
    phi = torch.from_numpy(art["components"][rows, :width]).double()
    pca = bool(art["recipe.pca"])
    lam = torch.from_numpy(art["lam"]).double()
    add_mean, keep = bool(art["recipe.add_mean"]), str(art["recipe.beyond"]) == "keep"

    def apply(x):
        xd = x.double()
        if not pca:
            return (lam[unit] * xd).to(x.dtype)
        c = xd - mu
        out = (c @ phi.T * lam[torch.from_numpy(rows)]) @ phi
        if keep:
            out = out + c - (c @ phi.T) @ phi
        if add_mean:
            out = out + mu
        return out.to(x.dtype)

    return apply


def laion_embedding_with_hooks(model, mel, art: dict) -> torch.Tensor:
    """LAION's own forward with the map hooked on its modules: `stage` on every WindowAttention's
    output of the chosen stages (window order and shift do not matter to a per-token map),
    `head` on the input of each WindowAttention's output projection, head by head."""
    branch, handles = model.audio_branch, []
    stages = [int(s) for s in art["stages"]]
    names = [str(n) for n in art["unit_names"]]
    try:
        for s in stages:
            for b, blk in enumerate(branch.layers[s].blocks):
                if str(art["granularity"]) == "stage":
                    fn = reference_map(art, names.index(f"layers.{s}.attn_out"))
                    handles.append(blk.attn.register_forward_hook(lambda mod, args, out, fn=fn: (fn(out[0]), *out[1:])))
                else:
                    nh = blk.attn.num_heads
                    fns = [reference_map(art, names.index(f"layers.{s}.blocks.{b}.attn.head{h}")) for h in range(nh)]

                    def pre(mod, args, fns=fns, nh=nh):
                        x = args[0]
                        heads = x.view(*x.shape[:-1], nh, -1)
                        return (torch.stack([f(heads[..., h, :]) for h, f in enumerate(fns)], -2).reshape(x.shape),)

                    handles.append(blk.attn.proj.register_forward_pre_hook(pre))
        with torch.no_grad():
            return audio_embedding_from_mel(model, mel)["embedding"]
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("granularity,stages", [("head", [1]), ("stage", [0, 2])])
def test_identity_untrained_is_zero_shot(hooked, clips, granularity, stages):
    est, data = fitted(hooked, clips, untrained("identity"), granularity, stages)
    assert np.array_equal(est.lam_, np.ones_like(est.lam_))
    idx = np.arange(N)
    with torch.no_grad():
        exact = hooked(clips["mel"])["embedding"]
    ours = est.logits(data, idx)
    # λ = 1 adds an exact zero, but the estimator runs the forward in micro-batches of 4 (and from a
    # cached stage entry) while `exact` is one batch of 6: float32 matmuls regrouped by batch shape
    # differ by a few ulps per layer (3e-7 seen). 1e-5 leaves room for that and is far below what any
    # real change of the map moves (λ ≠ 1 or a lost mean moves logits by > 1e-3, tested below).
    np.testing.assert_allclose(ours, zeroshot_logits(exact.numpy(), clips["text"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, zeroshot_logits(clips["plain"].numpy(), clips["text"]), atol=1e-4, rtol=1e-4)  # LAION's forward


@pytest.mark.parametrize("granularity,stages", [("head", [1, 3]), ("stage", [0, 1, 3])])
def test_token_bases_equal_sklearn_pca_of_the_fitting_clips_tokens(hooked, clips, granularity, stages):
    variance = 0.9
    est, _ = fitted(hooked, clips, untrained("identity", variance=variance), granularity, stages)
    site = "attn.hook_z" if granularity == "head" else "hook_attn_out"
    with torch.no_grad():
        _, cache = hooked.run_with_cache(clips["mel"][SPLIT.train], names=lambda n: n.endswith(site))
    b = est.bases_
    for s in stages:
        blocks = [cache[f"layers.{s}.blocks.{k}.{site}"].double().numpy() for k in range(hooked.arch.depths[s])]
        if granularity == "stage":
            units = {f"layers.{s}.attn_out": np.concatenate([x.reshape(-1, x.shape[-1]) for x in blocks])}
        else:  # two heads per block are enough
            units = {f"layers.{s}.blocks.{k}.attn.head{h}": x[:, :, h].reshape(-1, x.shape[-1])
                     for k, x in enumerate(blocks) for h in (0, x.shape[2] - 1)}
        for name, tokens in units.items():
            u = b.unit_names.index(name)
            width = tokens.shape[1]
            ref = PCA(n_components=variance, svd_solver="full").fit(tokens)
            phi = b.components[b.owner == u, :width].astype(np.float64)
            assert len(phi) == ref.n_components_, name
            np.testing.assert_allclose(b.means[u, :width], ref.mean_, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(phi.T @ phi, ref.components_.T @ ref.components_, atol=2e-3)
            np.testing.assert_allclose(b.explained[b.owner == u], ref.explained_variance_ratio_, atol=1e-4)
            clip_means = tokens.reshape(len(SPLIT.train), -1, width).mean(1)
            assert not np.allclose(b.means[u, :width], np.median(clip_means, 0), atol=1e-6)  # not a clip-level statistic


CASES = [
    ("stage", [1, 3], untrained("identity", lam_init="normal")),  # μ added back, beyond keep
    ("stage", [0], untrained("fine")),                           # the paper's fine: μ dropped, beyond drop
    ("stage", [2], untrained("coarse")),                         # one λ per stage on the uncentred output
    ("head", [1], untrained("fine")),
    ("head", [3], untrained("identity", lam_init="normal")),
    ("head", [0], untrained("coarse")),
]


@pytest.mark.parametrize("granularity,stages,recipe", CASES, ids=[f"{g}-{s}-{r.name}" for g, s, r in CASES])
def test_matches_the_map_hooked_on_laions_own_modules(model, hooked, clips, granularity, stages, recipe):
    est, data = fitted(hooked, clips, recipe, granularity, stages)
    buffer = io.BytesIO()
    np.savez(buffer, **est.artefacts())  # what a fold saves, read back without pickles
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as z:
        art = {k: z[k] for k in z.files}
    assert not np.allclose(art["lam"], 1)  # λ = 1 + N(0, 1): the map is not the identity
    reference = laion_embedding_with_hooks(model, clips["mel"], art)
    assert (reference - clips["plain"]).abs().max() > 1e-3
    logits = est.logits(data, np.arange(N))
    np.testing.assert_allclose(logits, zeroshot_logits(reference.numpy(), clips["text"]), atol=2e-3, rtol=1e-3)
    with torch.no_grad():
        ours = est.model_.embedding(torch.from_numpy(data.context["mel"]) if min(stages) == 0 else
                                    data.context[f"residual_inject/entry/{min(stages)}"])
    torch.testing.assert_close(ours, reference, atol=5e-4, rtol=1e-3)


def test_stage_granularity_has_one_lambda_vector_per_stage(hooked, clips):
    est, _ = fitted(hooked, clips, untrained("full"), "stage", [0, 1])
    with torch.no_grad():
        _, cache = hooked.run_with_cache(clips["mel"][SPLIT.train], names=lambda n: n.endswith("hook_attn_out"))
    for u, s in enumerate((0, 1)):  # variance 1.0: every component above float32 noise over the stage's tokens
        tokens = torch.cat([cache[f"layers.{s}.blocks.{b}.hook_attn_out"].flatten(0, 1) for b in (0, 1)]).double().numpy()
        ev = np.linalg.eigvalsh(np.cov(tokens.T))
        assert (ev > 1e-8 * ev.sum()).sum() <= est.bases_.counts[u] <= tokens.shape[1]
        assert est.bases_.counts[u] >= 0.9 * tokens.shape[1]
    assert est.n_params_ == len(est.lam_) == est.bases_.counts.sum()
    assert est.bases_.unit_names == ["layers.0.attn_out", "layers.1.attn_out"]
    assert [name for name, _ in est.model_.sites] == [f"layers.{s}.blocks.{b}.hook_attn_out" for s in (0, 1) for b in (0, 1)]
    coarse, _ = fitted(hooked, clips, untrained("coarse"), "stage", [0, 3])
    assert coarse.n_params_ == 2


def test_only_lambda_trains_the_encoder_stays_frozen_and_micro_batches_change_nothing(model, hooked, clips):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = dataclasses.replace(RECIPES["identity"], max_epochs=2, lr=0.05, batch_size=4, patience=5)
    context = dict(hooked=hooked, device=torch.device("cpu"), mel=clips["mel"].numpy())
    one, _ = fitted(hooked, clips, recipe, "stage", [3], micro_batch=1, context=context)
    four, _ = fitted(hooked, clips, recipe, "stage", [3], micro_batch=4, context=context)
    assert [n for n, p in one.model_.named_parameters() if p.requires_grad] == ["lam"]
    assert not any(k.startswith("audio_branch") for k in one.model_.state_dict())
    assert [r["epoch"] for r in one.history_] == [0, 1, 2] and sum(r["best"] for r in one.history_) == 1
    assert not np.allclose(one.lam_, 1)
    np.testing.assert_allclose(one.lam_, four.lam_, atol=1e-4)  # gradient accumulation = the batch gradient
    assert not model.training and not any(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a parameter or buffer of the encoder changed"
    assert list(context) == ["hooked", "device", "mel", "residual_inject/entry/3"]  # one entry cache, shared by fits


def test_selection_keeps_the_best_validation_lambda(hooked, clips):
    recipe = dataclasses.replace(RECIPES["fine"], max_epochs=3, lr=0.05, batch_size=4, patience=1, select_on="val_loss")
    est, data = fitted(hooked, clips, recipe, "stage", [3])
    best = [r for r in est.history_ if r["best"]]
    assert len(best) == 1 and best[0]["val_loss"] == min(r["val_loss"] for r in est.history_)
    val = est.logits(data, SPLIT.val)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(val), torch.from_numpy(clips["label"][SPLIT.val]))
    assert float(loss) == pytest.approx(best[0]["val_loss"], rel=1e-5)


def test_params_are_read_and_checked(tmp_path):
    import yaml
    from conftest import REPO, checked

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    est = build("residual_inject", params)
    assert (est.recipe.name, est.granularity) == ("identity", "head")
    params["residual"]["inject"]["recipe"] = "fine"
    params["residual"]["granularity"] = "stage"
    params["inject_layers"] = [3, 0]
    params.setdefault("residual", {}).setdefault("recipes", {}).setdefault("fine", {})["lr"] = 0.5
    est = build("residual_inject", params)
    assert (est.recipe.name, est.recipe.lr, est.recipe.variance, est.granularity, est.stages) == ("fine", 0.5, 0.9, "stage", [0, 3])
    for key, value in [("residual.granularity", "block"), ("residual.inject.recipe", "nope"),
                       ("residual.recipes.fine.lr", -1.0), ("residual.recipes.fine.lam_init", "zeros"),
                       ("residual.recipes.fine.colour", 1), ("residual.inject.micro_batch", 0), ("inject_layers", [5])]:
        bad = yaml.safe_load((REPO / "params.yaml").read_text())
        bad["residual"]["inject"]["recipe"] = "fine"
        node = bad
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
        with pytest.raises(ParamError, match=key.replace(".", r"\.") if leaf != "recipe" else "residual.inject.recipe"):
            checked(lambda p: build("residual_inject", p), bad)


def test_bases_see_only_the_fitting_clips(hooked, clips):
    """Bases depend on the fitting clips only: poisoning validation and test clips changes nothing, a fitting clip does."""
    recipe = dataclasses.replace(RECIPES["fine"], max_epochs=0)
    clean, _ = fitted(hooked, clips, recipe, "stage", [3])
    mel = clips["mel"].numpy().copy()
    mel[SPLIT.val] = 40.0
    mel[SPLIT.test] = 40.0
    poisoned, _ = fitted(hooked, clips, recipe, "stage", [3],
                         context=dict(hooked=hooked, device=torch.device("cpu"), mel=mel))
    art, ref = poisoned.artefacts(), clean.artefacts()
    for key in ("means", "components", "lam"):
        np.testing.assert_array_equal(art[key], ref[key])
    mel[SPLIT.train[:1]] = 40.0  # a fitting clip does move the bases
    moved, _ = fitted(hooked, clips, recipe, "stage", [3], context=dict(hooked=hooked, device=torch.device("cpu"), mel=mel))
    assert np.abs(moved.artefacts()["means"] - ref["means"]).max() > 1e-4
