"""Common entry point of the DVC stages: expected failures (bad input, bad params, missing
upstream outputs) end the stage with one line naming the file or key; a terminated run
unwinds like an interrupted one, so atomic writers leave nothing half-written."""

from __future__ import annotations

import argparse
import os
import signal
import warnings
import sys
from pathlib import Path

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


def _parser(stage) -> argparse.ArgumentParser:
    from .cli import stage_help

    parser = argparse.ArgumentParser(prog=f"stages/{stage.name}.py", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    if stage.per_dataset:
        parser.add_argument("dataset", nargs="?")
    parser.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    parser.format_help = lambda: stage_help(stage) + "\n"  # type: ignore[method-assign]
    return parser


def run_stage(name: str, argv: list[str] | None = None) -> None:
    """Run stage `name` with command-line arguments `argv` (`[<dataset>] [--help]`)."""
    from .cli import STAGES, resolve, stage_help
    from .logs import quiet_libraries
    from .schema import validate

    stage = STAGES[name]
    args = _parser(stage).parse_args(sys.argv[1:] if argv is None else argv)
    if args.help:
        try:
            params = load_params(args.params)
        except Exception:  # help never fails on a broken params file
            params = None
        print(stage_help(stage, params))
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    quiet_libraries()
    if not sys.stderr.isatty():  # no progress-bar animation in log files
        os.environ.setdefault("TQDM_DISABLE", "1")
    label = f"{name}@{args.dataset}" if stage.per_dataset and args.dataset else name
    warnings.formatwarning = lambda message, category, *rest: f"{label}: warning: {message}\n"
    try:
        params = load_params(args.params)
        validate(params, source=str(args.params))
        if stage.per_dataset:
            from .params import ParamError, check_dataset

            if not args.dataset:
                raise ParamError(f"{name} runs per dataset: give one of `datasets` (python stages/{name}.py <dataset>)")
            dataset = check_dataset(params, args.dataset)
            with transaction(label):
                result = resolve(stage)(params, dataset)
        else:
            with transaction(label):
                result = resolve(stage)(params)
    except expected_errors() as exc:
        sys.exit(f"{label}: {exc}")
    except OSError as exc:
        if not is_out_of_space(exc):
            raise
        sys.exit(f"{label}: {exc.filename or 'output'}: out of disk space ({exc.strerror})")
    if isinstance(result, (str, Path)):
        print(f"{label}: wrote {result}")


def main(name: str) -> None:
    """Entry of `stages/<name>.py`."""
    run_stage(name)
