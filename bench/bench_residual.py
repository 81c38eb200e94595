"""Direct-mode ResiDual on one fold of ESC-50 size: 1600 training clips (incl. validation),
400 test clips, 50 classes, 30 epochs, all 184 heads, synthetic data of the real shape.

Prints the bases-fitting time and the training time (target: training ≤ 10 s on 2 cores).
Run: python bench/bench_residual.py
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from residual_audio import alignment as al
from residual_audio.protocol import make_splits
from residual_audio.residual import fit_bases
from residual_audio.synthetic import in_memory_store, synthetic_world
from residual_audio.training import TrainConfig


def main() -> None:
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    arrays, attrs, text, _ = synthetic_world(n_per_class=40, n_classes=50, n_folds=5, rank=24, seed=0)
    store = in_memory_store(arrays, attrs)
    split = make_splits(store.label, store.fold, "official", 5, 0, 0.1)[0]
    t0 = time.perf_counter()
    bases = fit_bases(store.units[split.train_all], store.select("heads"), store.unit_names, 0.95)
    t1 = time.perf_counter()
    cfg = TrainConfig(max_epochs=30, lr=0.01, patience=30, batch_size=64)  # patience 30: all 30 epochs run
    res = al.run_residual(store, split, text, bases, cfg)
    t2 = time.perf_counter()
    epochs = max(r["epoch"] for r in res.history)
    acc = float((res.logits.argmax(1) == store.label[split.test]).mean())
    print(f"clips: train {len(split.train)} + val {len(split.val)}, test {len(split.test)}; units 184 heads; "
          f"lambda {res.params} components (variance 0.95)")
    print(f"bases (PCA of 184 heads): {t1 - t0:.2f} s")
    print(f"direct-mode training, {epochs} epochs incl. precomputation and test: {t2 - t1:.2f} s "
          f"({(t2 - t1) / max(epochs, 1):.3f} s/epoch); test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
