"""DVC stage `geometry`: intrinsic dimension, statistics, specialization and discriminability
of every attention head, from data/heads/<dataset>.zarr, into plots/geometry/ and metrics/geometry.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.geometry import stage  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("geometry", stage)
