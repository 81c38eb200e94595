"""DVC stage `download`: the dataset into data/raw/<dataset>/ and the model files into data/models/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.datasets import DatasetError  # noqa: E402
from residual_audio.download import DownloadError, run  # noqa: E402
from residual_audio.params import ParamError, load_params  # noqa: E402


def main() -> None:
    try:
        run(load_params("params.yaml"))
    except (ParamError, DownloadError, DatasetError) as exc:
        sys.exit(f"download: {exc}")


if __name__ == "__main__":
    main()
