"""DVC stage `extract`: data/mel/<dataset>.zarr -> data/heads/<dataset>.zarr (see README)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.extract import run  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("extract", run)
