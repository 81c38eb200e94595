"""The Fisher score of a head's points: between-class over within-class scatter. The geometry stage
reports it on every clip (descriptive); the ablation stage computes it on each fold's training clips."""

from __future__ import annotations

import numpy as np
import torch


def fisher_scores(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """tr(S_B) / tr(S_W) of each head [H, N, d]: between-class over within-class scatter."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("the Fisher score needs at least 2 classes")
    onehot = torch.as_tensor(np.eye(len(classes))[index])  # [N, C]
    counts = onehot.sum(0)
    xc = x - x.mean(dim=1, keepdim=True)
    class_sums = onehot.T @ xc  # [H, C, d], centred
    between = ((class_sums**2).sum(-1) / counts).sum(-1)  # Σ_c n_c |μ_c − μ|²
    total = (xc * xc).sum((1, 2))
    within = total - between  # total scatter = between + within
    if torch.any(within <= 1e-12 * total):
        raise ValueError("zero within-class scatter: every class collapses to one point")
    return (between / within).numpy()
