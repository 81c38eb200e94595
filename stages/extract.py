"""DVC stage `extract` (`python stages/extract.py <dataset>`; `--help` says what it reads and writes)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.core.runner import main  # noqa: E402
from residual_audio.stages import extract  # noqa: E402

if __name__ == "__main__":
    main("extract", extract.run)
