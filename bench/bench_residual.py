"""Direct-mode ResiDual recipes on one fold of ESC-50 size: 1440 fitting + 160 validation clips,
400 test clips, 50 classes, 30 epochs, all 184 heads (196 units for `full`), synthetic data of
the real shape.

Prints, per recipe, the time of the shared per-unit PCA (once per fold) and of training
(target for `identity`: ≤ 10 s on 2 cores).
Run: python bench/bench_residual.py [--recipes coarse fine full identity]
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace

import numpy as np
import torch

from residual_audio.data.synthetic import in_memory_store, synthetic_world
from residual_audio.evaluation.protocol import make_splits
from residual_audio.methods import FoldData
from residual_audio.methods.residual.maths import RECIPES
from residual_audio.methods.residual.recipes import REGISTRY_RECIPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["coarse", "fine", "full", "identity"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    arrays, attrs, text, _ = synthetic_world(n_per_class=40, n_classes=50, n_folds=5, rank=24, seed=0)
    store = in_memory_store(arrays, attrs)
    split = make_splits(store.label, store.fold, "official", 5, 0, 0.1)[0]
    data = FoldData(store, text, split)
    print(f"clips: train {len(split.train)} + val {len(split.val)}, test {len(split.test)}")
    for name in args.recipes:
        # patience 30: all 30 epochs run; one learning rate
        recipe = replace(RECIPES[name], patience=30, lr=0.8 if name != "identity" else 0.01)
        est = REGISTRY_RECIPES[name](recipe)
        t0 = time.perf_counter()
        est._fit_bases(data, est._units(store)[0])  # fills the fold's PCA cache, as the first recipe of a fold does
        t1 = time.perf_counter()
        est.fit(data)
        logits = est.logits(data, split.test)
        t2 = time.perf_counter()
        acc = float((logits.argmax(1) == store.label[split.test]).mean())
        epochs = max(r["epoch"] for r in est.history_)
        print(f"{name:9s} λ {est.n_params_:6d}  PCA {t1 - t0:6.2f} s  training {epochs} epochs + test {t2 - t1:6.2f} s "
              f"({(t2 - t1) / max(epochs, 1):.3f} s/epoch)  accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
