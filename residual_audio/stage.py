"""Common entry point of the DVC stages: expected failures (bad input, bad params, missing
upstream outputs) end the stage with one line naming the file or key; a terminated run
unwinds like an interrupted one, so atomic writers leave nothing half-written."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable

from .io import OutOfSpaceError, is_out_of_space, transaction
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
            ParamError, TextCacheError, OutOfSpaceError, FileNotFoundError)


def main(name: str, run: Callable[[dict], object], params_path: str = "params.yaml") -> None:
    """Run `run(params)` as stage `name`, turning expected errors into a one-line exit message.

    The whole params file is checked against the schema first, so a typo'd key stops every
    stage. The stage runs in one transaction: its outputs are all replaced together at the
    end, or none is (see `io.transaction`); leftovers of killed earlier runs are cleaned first.
    """
    from .schema import validate

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        params = load_params(params_path)
        validate(params, source=str(params_path))
        with transaction(name):
            result = run(params)
    except expected_errors() as exc:
        sys.exit(f"{name}: {exc}")
    except OSError as exc:
        if not is_out_of_space(exc):
            raise
        sys.exit(f"{name}: {exc.filename or 'output'}: out of disk space ({exc.strerror})")
    if isinstance(result, (str, Path)):
        print(f"{name}: wrote {result}")
