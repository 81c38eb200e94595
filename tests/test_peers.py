"""Tip-Adapter, Tip-Adapter-F and prompt learning against independent re-derivations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from residual_audio.data.synthetic import in_memory_store, synthetic_world
from residual_audio.evaluation.protocol import Split, make_splits
from residual_audio.evaluation.zeroshot import zeroshot_logits
from residual_audio.methods import FoldData, build
from residual_audio.methods.tip_adapter import TipAdapter, TipAdapterF
from conftest import checked


@pytest.fixture(scope="module")
def world():
    arrays, attrs, text, _ = synthetic_world(n_per_class=8, n_classes=5, seed=3)
    store = in_memory_store(arrays, attrs)
    split = make_splits(store.label, store.fold, "stratified", 2, 0, 0.0)[0]
    rng = np.random.default_rng(0)
    fit, val = [], []
    for c in range(5):
        pool = rng.permutation(split.train_all[store.label[split.train_all] == c])
        fit += list(pool[:2])
        val += list(pool[2:4])
    return store, text, Split("f0", np.sort(fit), np.sort(val), split.test)


def numpy_audio(text, embedding):
    """Normalised 512-d audio embeddings and zero-shot logits, re-derived in float64 numpy."""
    p = text.projection
    h = np.maximum(embedding.astype(np.float64) @ p["w1"].T.astype(np.float64) + p["b1"], 0)
    a = h @ p["w2"].T.astype(np.float64) + p["b2"]
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a, text.logit_scale * a @ text.class_embeddings.T.astype(np.float64)


def numpy_tip(text, embedding, keys_embedding, key_labels, n_classes, alpha, beta):
    a, zs = numpy_audio(text, embedding)
    keys, _ = numpy_audio(text, keys_embedding)
    values = np.eye(n_classes)[key_labels]
    return zs + alpha * np.exp(-beta * (1 - a @ keys.T)) @ values


def test_tip_adapter_alpha_zero_is_exactly_zeroshot(world):
    store, text, split = world
    data = FoldData(store, text, split)
    est = TipAdapter(alpha=[0.0], beta=[5.5]).fit(data)
    got = est.logits(data, split.test)
    assert np.array_equal(got, zeroshot_logits(store.embedding[split.test], text))
    assert est.n_params_ == 0
    # and the cache term is not zero, so α does matter
    other = TipAdapter(alpha=[1.0], beta=[5.5]).fit(data).logits(data, split.test)
    assert np.abs(other - got).max() > 1e-3


def test_tip_adapter_matches_numpy_formula(world):
    store, text, split = world
    data = FoldData(store, text, split)
    got = TipAdapter(alpha=[0.7], beta=[3.0]).fit(data).logits(data, split.test)
    want = numpy_tip(text, store.embedding[split.test], store.embedding[split.train], store.label[split.train], 5, 0.7, 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_tip_adapter_grid_search_on_validation(world):
    store, text, split = world
    alphas, betas = [0.1, 1.0, 5.0, 50.0], [0.5, 3.0, 7.0]
    est = TipAdapter(alpha=alphas, beta=betas).fit(FoldData(store, text, split))
    best, pick = -1.0, None
    for b in betas:  # plain re-derivation: first best in grid order, β outer
        for a in alphas:
            logits = numpy_tip(text, store.embedding[split.val], store.embedding[split.train], store.label[split.train], 5, a, b)
            acc = (logits.argmax(1) == store.label[split.val]).mean()
            if acc > best:
                best, pick = acc, (a, b)
    assert (est.alpha_, est.beta_) == pick
    assert est.val_acc_ == pytest.approx(best)


def test_tip_adapter_without_validation_uses_initial_values(world):
    store, text, split = world
    est = TipAdapter().fit(FoldData(store, text, Split("f", split.train, np.array([], dtype=np.int64), split.test)))
    assert (est.alpha_, est.beta_) == (1.0, 1.0)


def test_tip_adapter_f_trains_the_keys_only(world):
    store, text, split = world
    data = FoldData(store, text, split, seed=1)
    untrained = TipAdapterF(epochs=0).fit(data)
    plain = TipAdapter().fit(data)
    np.testing.assert_array_equal(untrained.keys_.numpy(), plain.keys_.numpy())
    np.testing.assert_array_equal(untrained.logits(data, split.test), plain.logits(data, split.test))
    est = TipAdapterF(epochs=20).fit(data)
    assert est.n_params_ == len(split.train) * 512
    assert est.artefacts()["keys"].shape == (len(split.train), 512)
    np.testing.assert_array_equal(est.values_.numpy(), np.eye(5)[store.label[split.train]])
    losses = [r["train_loss"] for r in est.history_ if "train_loss" in r and np.isfinite(r["train_loss"])]
    assert len(losses) == 20 and losses[-1] < losses[0]
    # the keys the logits use are the kept epoch's; the formula is the same as Tip-Adapter's
    keys = est.keys_.numpy().astype(np.float64)
    a, zs = numpy_audio(text, store.embedding[split.test])
    want = zs + est.alpha_ * np.exp(-est.beta_ * (1 - a @ keys.T)) @ np.eye(5)[store.label[split.train]]
    np.testing.assert_allclose(est.logits(data, split.test), want, rtol=1e-4, atol=1e-4)


def test_from_params_validates_the_grid(world):
    from residual_audio.core.params import ParamError

    with pytest.raises(ParamError, match="tip_adapter.alpha"):
        checked(lambda p: build("tip_adapter", p), {"tip_adapter": {"alpha": []}})
    with pytest.raises(ParamError, match="tip_adapter.epochs"):
        checked(lambda p: build("tip_adapter_f", p), {"tip_adapter": {"epochs": -1}})
    with pytest.raises(ParamError, match="prompt_learning.epochs"):
        checked(lambda p: build("prompt_learning", p), {"prompt_learning": {"epochs": "many"}})
    # the grid from params.yaml is the one searched: the chosen (α, β) come from it
    store, text, split = world
    est = build("tip_adapter", {"tip_adapter": {"alpha": [0, 1], "beta": [2]}}).fit(FoldData(store, text, split))
    assert est.alpha_ in (0.0, 1.0) and est.beta_ == 2.0


# --------------------------------------------------------------------------- prompt learning


@pytest.fixture(scope="module")
def prompt_world(model, tokenizer):
    from residual_audio.evaluation.zeroshot import build_text_side
    from residual_audio.models.laion import PROMPT

    arrays, attrs, _, _ = synthetic_world(n_per_class=4, n_classes=5, seed=5)
    classes = ["dog", "chirping_birds", "vacuum cleaner", "church bells", "rain"]
    attrs = dict(attrs, classes=classes)
    text = build_text_side(model, tokenizer, classes, [PROMPT])  # LAION's prompt, the default template
    store = in_memory_store(arrays, attrs)
    split = make_splits(store.label, store.fold, "stratified", 2, 0, 0.0)[0]
    return store, text, split


@pytest.mark.shared
def test_untrained_prompts_equal_the_zeroshot_text_vectors(model, tokenizer, prompt_world):
    from residual_audio.models.laion import PROMPT, tokenize

    store, text, split = prompt_world
    data = FoldData(store, text, split, context={"model": model, "tokenizer": tokenizer})
    est = build("prompt_learning", {"prompt_learning": {"epochs": 0}}).fit(data)
    # against the text cache (input ids, 77 tokens) ...
    np.testing.assert_allclose(est.class_embeddings_.numpy(), text.class_embeddings, atol=2e-5)
    # ... and against LAION's own text path
    with torch.no_grad():
        texts = [PROMPT.format(label=c.replace("_", " ")) for c in text.classes]
        laion = torch.nn.functional.normalize(model.encode_text(tokenize(tokenizer, texts), "cpu"), dim=-1)
    np.testing.assert_allclose(est.class_embeddings_.numpy(), laion.numpy(), atol=2e-5)
    # "This is a sound of" is 5 tokens: 5 × 768 trainable numbers
    assert est.n_params_ == 5 * 768 == est.ctx_.numel()
    np.testing.assert_allclose(est.logits(data, split.test), text.logit_scale * numpy_audio(text, store.embedding[split.test])[0]
                               @ text.class_embeddings.T.astype(np.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.shared
def test_prompt_learning_trains_only_the_context(model, tokenizer, prompt_world):
    store, text, split = prompt_world
    before = {k: v.clone() for k, v in model.text_branch.state_dict().items()}
    data = FoldData(store, text, split, context={"model": model, "tokenizer": tokenizer})
    est = build("prompt_learning", {"prompt_learning": {"epochs": 3}}).fit(data)
    # CoOp's constant warm-up epoch, then cosine annealing over all epochs: 0.002 · (1 + cos(π/3)) / 2
    assert [r["lr"] for r in est.history_] == pytest.approx([1e-5, 0.002, 0.0015])
    assert not torch.equal(est.ctx_, model.text_branch.embeddings.word_embeddings.weight[[713, 16, 10, 2369, 9]])
    assert all(torch.equal(v, model.text_branch.state_dict()[k]) for k, v in before.items())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0
    assert not model.training


def test_coop_epochs():
    from residual_audio.methods.prompt_learning import PromptLearning, coop_epochs

    assert [coop_epochs(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert PromptLearning()._epochs(np.array([0, 0, 1, 1])) == 100


def test_tuning_published_and_grid(world):
    """`tuning.mode`: published runs one fixed value per method (the paper's lr, Tip-Adapter's α = 1, β = 5.5 with α
    on CLIP's logit scale); grid gives every trained method lr × tuning.lr_factors (the same size for all) and
    Tip-Adapter the original's search lists (utils.py search_hp: 200 β × 20 α for the ImageNet config)."""
    from residual_audio.methods.tip_adapter import search_lists

    pub = {"tuning": {"mode": "published"}}
    grid = {"tuning": {"mode": "grid"}}
    assert build("residual_fine", pub).recipe.lr == 0.8 and build("linear", pub).lr == (0.001,)
    assert build("tip_adapter", pub).get_params() == {"alpha": (1.0,), "beta": (5.5,), "alpha_unit": "clip"}
    sizes = {m: len(build(m, grid).recipe.lr if m.startswith("residual") else build(m, grid).lr)
             for m in ("residual_fine", "residual_identity", "linear", "spectral_out", "linear_adapter")}
    assert set(sizes.values()) == {5}, sizes
    assert build("residual_fine", grid).recipe.lr == pytest.approx((0.08, 0.24, 0.8, 2.4, 8.0))
    alphas, betas = search_lists([7, 3], [200, 20])
    assert len(betas) == 200 and len(alphas) == 20 and betas[0] == alphas[0] == pytest.approx(0.1)
    assert betas[1] == pytest.approx(0.1 + 6.9 / 200) and alphas[-1] == pytest.approx(0.1 + 19 * 2.9 / 20)
    assert build("tip_adapter", grid).alpha == alphas
    # α on CLIP's scale: the cache is weighted by α · (CLAP's logit scale / 100)
    store, text, split = world
    data = FoldData(store, text, split)
    clip = TipAdapter(alpha=[1.0], beta=[5.5], alpha_unit="clip").fit(data)
    raw = TipAdapter(alpha=[text.logit_scale / 100], beta=[5.5]).fit(data)
    np.testing.assert_allclose(clip.logits(data, split.test), raw.logits(data, split.test), rtol=1e-6, atol=1e-6)
