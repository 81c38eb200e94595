"""Head ablation and the zero-shot text side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from residual_audio.ablation import fisher_correlation, mean_ablation
from residual_audio.protocol import make_splits
from residual_audio.synthetic import in_memory_store, synthetic_world
from residual_audio.zeroshot import build_text_side, topk_correct, zeroshot_logits


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


def test_text_side_matches_the_model_path(model, tokenizer):
    from residual_audio.clap import class_embeddings, logit_scale

    classes = ["dog", "church_bells", "rain"]
    templates = ["This is a sound of {label}.", "A recording of {label}."]
    text = build_text_side(model, tokenizer, classes, templates)
    assert np.allclose(text.class_embeddings, class_embeddings(model, tokenizer, classes, templates).numpy())
    assert text.logit_scale == pytest.approx(logit_scale(model)) and text.weights == "random"
    emb = torch.randn(4, 768)
    with torch.no_grad():
        ref = logit_scale(model) * torch.nn.functional.normalize(model.audio_projection(emb), dim=-1) @ torch.from_numpy(text.class_embeddings).T
    assert np.allclose(zeroshot_logits(emb.numpy(), text), ref.numpy(), atol=1e-4)
