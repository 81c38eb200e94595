"""DVC stage `text`: Cache class vectors, temperature and the frozen audio projection of the dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.experiment import text_stage  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("text", text_stage)
