"""DVC stage `preprocess`: data/raw/<dataset>/ -> data/mel/<dataset>.zarr + data/mel/<dataset>.csv."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.preprocess import run  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("preprocess", run)
