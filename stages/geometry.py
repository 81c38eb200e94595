"""DVC stage `geometry`: intrinsic dimension, statistics, specialization and
discriminability of every attention head, from data/heads/<dataset>.zarr.

Writes plots/geometry/ (tables and figures) and metrics/geometry.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio import geometry  # noqa: E402
from residual_audio.params import load_params  # noqa: E402

HEADS_DIR = "data/heads"
OUT_DIR = "plots/geometry"
METRICS_PATH = "metrics/geometry.json"


def main() -> None:
    config = geometry.config_from_params(load_params("params.yaml"), HEADS_DIR)
    summary = geometry.run(out_dir=OUT_DIR, metrics_path=METRICS_PATH, **config)
    print(f"geometry: {', '.join(summary['datasets'])} (weights: {summary['weights']}) → {OUT_DIR}, {METRICS_PATH}")


if __name__ == "__main__":
    main()
