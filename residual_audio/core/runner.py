"""Common entry point of the DVC stages (`stages/<name>.py` calls `main(name, run)`): expected failures (bad input, bad params, missing
upstream outputs) end the stage with one line naming the file or key; a terminated run
unwinds like an interrupted one, so atomic writers leave nothing half-written."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path

# No progress-bar animation in log files: tqdm reads TQDM_DISABLE when it is first imported, so
# it is set before any stage module (and tqdm) is.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_DISABLE", "1")

from .io import OutOfSpaceError, is_out_of_space, transaction, user_path  # noqa: E402
from .params import load_params  # noqa: E402
from .pipeline import STAGES, Stage, stage_help  # noqa: E402


def expected_errors() -> tuple[type[BaseException], ...]:
    from ..data.audio import AudioError
    from ..data.datasets import DatasetError
    from ..data.fetch import DownloadError
    from ..data.stores import StoreError
    from ..evaluation.results import ResultsError
    from ..evaluation.zeroshot import TextCacheError
    from ..models.checkpoints import CheckpointError, TokenizerError
    from .params import ParamError

    from ..adapted.bundle import BundleError

    return (AudioError, CheckpointError, TokenizerError, DatasetError, DownloadError, StoreError,
            ParamError, ResultsError, TextCacheError, OutOfSpaceError, FileNotFoundError, BundleError)


def _parser(stage: Stage) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"stages/{stage.name}.py", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    if stage.per_dataset:
        parser.add_argument("dataset", nargs="?")
    parser.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    parser.format_help = lambda: stage_help(stage) + "\n"  # type: ignore[method-assign]
    return parser


def run_stage(name: str, run, argv: list[str] | None = None) -> None:
    """Run stage `name` (of `pipeline.STAGES`), whose logic is `run(params[, dataset])`, with the
    command-line arguments `argv` (`[<dataset>] [--help]`)."""
    stage = STAGES[name]
    args = _parser(stage).parse_args(sys.argv[1:] if argv is None else argv)
    if args.help:
        try:
            params = load_params(args.params)
        except Exception:  # help never fails on a broken params file
            params = None
        print(stage_help(stage, params))
        return
    if not stage.per_dataset:
        execute(name, run, args.params)
        return
    if not args.dataset:
        sys.exit(f"{name}: runs per dataset: give one of `datasets` (python stages/{name}.py <dataset>)")
    execute(f"{name}@{args.dataset}", lambda params: run(params, args.dataset), args.params, dataset=args.dataset)


def execute(label: str, run, params_path: str | Path = "params.yaml", dataset: str | None = None) -> None:
    """Run `run(params)` as stage `label`: the whole params file checked against the schema first
    (and `dataset`, for a per-dataset stage, against `datasets`: a check of the command line, not a
    dependency on the list), the outputs replaced all together at the end or none (one
    transaction, see `io.transaction`; leftovers of killed earlier runs cleaned first), expected
    errors and a full disk turned into one line naming the file or key."""
    from .logs import quiet_libraries
    from .params import check_dataset
    from .schema import validate

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    quiet_libraries()
    warnings.formatwarning = lambda message, category, *rest: f"{label}: warning: {message}\n"
    try:
        params = load_params(params_path)
        validate(params, source=str(params_path))
        if dataset is not None:
            check_dataset(params, dataset)
        tracing = bool(os.environ.get("RESIDUAL_AUDIO_TRACE"))  # the deps test's record (see trace.py)
        if tracing:
            from . import trace

            params, reads = trace.start(params)
        with transaction(label):
            result = run(params)
        if tracing:
            trace.finish(label, reads)
    except expected_errors() as exc:
        sys.exit(f"{label}: {exc}")
    except OSError as exc:  # read-only, permission, name too long, not a directory, full disk: one line
        name = user_path(exc.filename) if exc.filename else "output"
        if is_out_of_space(exc):
            sys.exit(f"{label}: {name}: out of disk space ({exc.strerror})")
        sys.exit(f"{label}: {name}: {exc.strerror or exc.__class__.__name__}"
                 + (f" (and {user_path(exc.filename2)})" if getattr(exc, "filename2", None) else ""))
    if isinstance(result, (str, Path)):
        print(f"{label}: wrote {result}")


def main(name: str, run, params_path: str = "params.yaml") -> None:
    """Entry of `stages/<name>.py`: stage `name` of `pipeline.STAGES`, or any other name, run as
    `run(params)` the same way (one transaction, one-line errors)."""
    if name in STAGES:
        run_stage(name, run)
    else:
        execute(name, run, params_path)
