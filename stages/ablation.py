"""DVC stage `ablation`: Mean-ablation of each head and block, and its correlation with the Fisher score."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.experiment import ablation_stage  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("ablation", ablation_stage)
