"""Head ablation and the zero-shot text side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from residual_audio.analysis.ablation import fisher_correlation, mean_ablation
from residual_audio.data.synthetic import in_memory_store, synthetic_world
from residual_audio.evaluation.protocol import make_splits
from residual_audio.evaluation.zeroshot import build_text_side, topk_correct, zeroshot_logits


def test_ablating_signal_heads_hurts_and_fisher_correlation_is_found():
    arrays, attrs, text, truth = synthetic_world(n_per_class=6, n_classes=6, n_folds=2, nuisance=0.0, n_signal_units=1, seed=3)
    store = in_memory_store(arrays, attrs)
    table = mean_ablation(store, make_splits(store.label, store.fold, "official", 2, 0, 0.0), text)
    heads = table[table.kind == "head"].set_index("unit")
    assert len(heads) == 184 and (table.kind == "block").sum() == 12
    signal = heads.loc[truth["signal_units"], "drop"].min()
    assert signal > 0.3 and signal > heads.drop(truth["signal_units"])["drop"].max()
    # geometry rows in another order, with the Fisher score a monotone function of the drop
    geo = heads.reset_index()[["stage", "block", "head", "drop"]].sample(frac=1, random_state=0)
    geo = pd.concat([geo.assign(regime="pretrained", fisher=np.exp(geo["drop"])),
                     geo.assign(regime="random", fisher=-geo["drop"])]).assign(dataset="synthetic").drop(columns="drop")
    rho = fisher_correlation(table, geo, "synthetic")
    assert rho["pretrained"]["spearman"] == pytest.approx(1.0) and rho["random"]["spearman"] == pytest.approx(-1.0)
    assert rho["pretrained"]["n"] == 184


def test_topk():
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert topk_correct(logits, np.array([0, 0]), 1).tolist() == [True, False]
    assert topk_correct(logits, np.array([1, 1]), 2).tolist() == [True, True]
    assert topk_correct(logits, np.array([0, 0]), 5).tolist() == [True, True]


def test_text_side_matches_laion_get_text_embedding(model, tokenizer):
    """The cached class vectors against LAION's own `CLAP.get_text_embedding` (templates averaged after
    normalisation), and the zero-shot logits against LAION's own audio projection."""
    from residual_audio.models.laion import logit_scale

    classes = ["dog", "church_bells", "rain"]
    templates = ["This is a sound of {label}", "A recording of {label}."]
    text = build_text_side(model, tokenizer, classes, templates)
    per = []
    for t in templates:
        tokens = tokenizer([t.format(label=c.replace("_", " ")) for c in classes], padding="max_length", truncation=True,
                           max_length=77, return_tensors="pt")
        with torch.no_grad():
            per.append(model.get_text_embedding({"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}))
    ref = torch.nn.functional.normalize(torch.stack(per).mean(0), dim=-1).numpy()
    np.testing.assert_allclose(text.class_embeddings, ref, atol=1e-5)
    assert text.logit_scale == pytest.approx(float(model.logit_scale_a.exp())) and text.weights == "random"
    emb = torch.randn(4, 768)
    with torch.no_grad():
        ref = logit_scale(model) * torch.nn.functional.normalize(model.audio_projection(emb), dim=-1) @ torch.from_numpy(ref).T
    assert np.allclose(zeroshot_logits(emb.numpy(), text), ref.numpy(), atol=1e-4)


def test_the_correlated_fisher_score_comes_from_training_clips_only(tmp_path):
    """The Fisher score the ablation drops are correlated with is each fold's training-clip score, averaged:
    computed here by hand from the store's arrays, and unchanged when a fold's test clips are replaced."""
    import zarr

    from residual_audio.analysis.ablation import fitting_fisher
    from residual_audio.data.synthetic import synthetic_world, write_store
    from residual_audio.evaluation.protocol import make_splits

    arrays, attrs, _, _ = synthetic_world(n_per_class=6, n_classes=3, n_folds=3, seed=4)
    n = len(arrays["label"])
    rng = np.random.default_rng(0)
    arrays["heads/pre"] = rng.standard_normal((n, len(attrs["heads"]), 4)).astype(np.float32)
    for s in sorted({h[0] for h in attrs["heads"]}):
        k = sum(1 for h in attrs["heads"] if h[0] == s)
        arrays[f"heads/post/stage{s}"] = rng.standard_normal((n, k, 6)).astype(np.float32)
    write_store(tmp_path / "s.zarr", arrays, attrs)
    splits = make_splits(arrays["label"], arrays["fold"], "official", 3, 0, 0.0)
    table = fitting_fisher(tmp_path / "s.zarr", splits, regimes=("pre",))

    def by_hand(x, y):  # tr(S_B) / tr(S_W) of one head's points
        mu = x.mean(0)
        between = sum((y == c).sum() * np.sum((x[y == c].mean(0) - mu) ** 2) for c in np.unique(y))
        within = sum(np.sum((x[y == c] - x[y == c].mean(0)) ** 2) for c in np.unique(y))
        return between / within

    x, y = arrays["heads/pre"][:, 0].astype(np.float64), arrays["label"]
    expected = np.mean([by_hand(x[s.train_all], y[s.train_all]) for s in splits])
    np.testing.assert_allclose(table.fisher.iloc[0], expected, rtol=1e-6)
    # a fold's own score never sees its test clips
    poisoned = dict(arrays)
    poisoned["heads/pre"] = arrays["heads/pre"].copy()
    poisoned["heads/pre"][splits[0].test] += 100.0 * (y[splits[0].test, None, None] + 1)
    write_store(tmp_path / "p.zarr", poisoned, attrs)
    one = fitting_fisher(tmp_path / "s.zarr", splits[:1], regimes=("pre",))
    again = fitting_fisher(tmp_path / "p.zarr", splits[:1], regimes=("pre",))
    np.testing.assert_allclose(one.fisher, again.fisher, rtol=1e-6)
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["heads/pre"].shape == (n, len(attrs["heads"]), 4)
