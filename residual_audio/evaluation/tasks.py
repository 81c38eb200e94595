"""The task seam: how a dataset's folds are drawn, what text its audio is scored against, and how
its logits are scored. Every stage that fits or scores methods (`train`, `fewshot`, `ablation`,
`evaluate`) asks the dataset's task (`task_of`), never its labels directly.

`Classification` (class prompts; top-1 and top-5 accuracy) is the one task today. A new task (audio-text
retrieval with captions is next) is one class here with the same methods, one line in `TASKS`, and
`task=` on its datasets in `data.datasets.DATASETS`.
"""

from __future__ import annotations

import numpy as np

from ..data.datasets import DATASETS
from ..data.paths import TEXT_DIR
from .protocol import Split, make_splits
from .zeroshot import TextSide, load_text_side, topk_correct


class Classification:
    """Class labels scored against one text vector per class (the zero-shot prompts)."""

    name = "classification"
    metrics = ("accuracy", "top5")

    def splits(self, store, p, val_fraction: float | None = None, warn: bool = True) -> list[Split]:
        """The outer folds of `cv.*` (`p`: scheme, k, seed, val_fraction), stratified by class."""
        vf = p.val_fraction if val_fraction is None else val_fraction
        return make_splits(store.label, store.fold, p.scheme, p.k, p.seed, vf, warn=warn)

    def text_side(self, dataset: str, store) -> TextSide:
        """The cached class vectors of `dataset`, checked against the store's classes."""
        return load_text_side(TEXT_DIR / f"{dataset}.npz", store.classes)

    def correct(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per clip: whether the top-scored class is its label."""
        return np.asarray(logits).argmax(1) == np.asarray(labels)

    def accuracy(self, logits: np.ndarray, labels: np.ndarray) -> float:
        return float(self.correct(logits, labels).mean())

    def fold_scores(self, logits: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, n_folds: int) -> dict:
        """Top-1 and top-5 accuracy per fold, in fold order (every clip in some test fold)."""
        from ..core.params import ParamError

        if (fold_of < 0).any():
            raise ParamError("results: some clips were never in a test fold")
        top1, top5 = topk_correct(logits, labels, 1), topk_correct(logits, labels, 5)
        return {"accuracy": [float(top1[fold_of == f].mean()) for f in range(n_folds)],
                "top5": [float(top5[fold_of == f].mean()) for f in range(n_folds)]}


TASKS = {"classification": Classification()}


def task_of(dataset: str):
    """The task of dataset `dataset`: its `task` in `data.datasets.DATASETS` (the runner has checked
    the name against `datasets`; a store named outside the registry, as the tests' synthetic ones,
    holds class labels)."""
    spec = DATASETS.get(dataset)
    return TASKS[spec.task if spec is not None else Classification.name]
