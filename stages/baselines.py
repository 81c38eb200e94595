"""DVC stage `baselines`: Zero-shot, linear probe and linear adapter on every fold."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.experiment import baselines_stage  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("baselines", baselines_stage)
