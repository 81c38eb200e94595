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
