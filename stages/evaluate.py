"""DVC stage `evaluate`: Metrics, per-fold table, confusion matrices, learning curves, lambda plots, comparison."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.report import evaluate_stage  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("evaluate", evaluate_stage)
