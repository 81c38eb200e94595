"""DVC stage `bases`: Fit per-unit means and PCA bases on the training folds of every fold."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.experiment import bases_stage  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("bases", bases_stage)
