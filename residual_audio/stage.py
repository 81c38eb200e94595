"""Common entry point of the DVC stages: expected failures (bad input, bad params, missing
upstream outputs) end the stage with one line naming the file or key; a terminated run
unwinds like an interrupted one, so atomic writers leave nothing half-written."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable

from .params import load_params


def expected_errors() -> tuple[type[BaseException], ...]:
    from .audio import AudioError
    from .clap import CheckpointError, TokenizerError
    from .datasets import DatasetError
    from .download import DownloadError
    from .params import ParamError
    from .stores import StoreError
    from .zeroshot import TextCacheError

    return (AudioError, CheckpointError, TokenizerError, DatasetError, DownloadError, StoreError,
            ParamError, TextCacheError, FileNotFoundError)


def main(name: str, run: Callable[[dict], object], params_path: str = "params.yaml") -> None:
    """Run `run(params)` as stage `name`, turning expected errors into a one-line exit message."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        result = run(load_params(params_path))
    except expected_errors() as exc:
        sys.exit(f"{name}: {exc}")
    if isinstance(result, (str, Path)):
        print(f"{name}: wrote {result}")
