"""Intrinsic dimension, per-head geometry and its figures, ablation."""
