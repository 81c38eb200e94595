"""DVC stage `preprocess`: data/raw/<dataset>/ -> data/mel/<dataset>.zarr + data/mel/<dataset>.csv."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.audio import AudioError  # noqa: E402
from residual_audio.clap import CheckpointError  # noqa: E402
from residual_audio.datasets import DatasetError  # noqa: E402
from residual_audio.params import ParamError, load_params  # noqa: E402
from residual_audio.preprocess import run  # noqa: E402


def main() -> None:
    try:
        run(load_params("params.yaml"))
    except (ParamError, DatasetError, AudioError, CheckpointError) as exc:
        sys.exit(f"preprocess: {exc}")


if __name__ == "__main__":
    main()
