"""DVC stage `fewshot`: few-shot curves of every method in `fewshot.methods` on `dataset`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.fewshot import fewshot_stage  # noqa: E402
from residual_audio.stage import main  # noqa: E402

if __name__ == "__main__":
    main("fewshot", fewshot_stage)
