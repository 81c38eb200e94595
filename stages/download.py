"""DVC stage `download`: the dataset into data/raw/<dataset>/ and the model files into data/models/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.download import run  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("download", run)
