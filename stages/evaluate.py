"""DVC stage `evaluate`: Metrics, per-fold table, confusion matrices, learning curves, lambda plots, comparison."""

from residual_audio.report import evaluate_stage
from residual_audio.params import load_params

if __name__ == "__main__":
    evaluate_stage(load_params())
