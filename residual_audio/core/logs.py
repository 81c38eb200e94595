"""Console output of the stages: progress bars that stay plain in logs, and quiet libraries.

tqdm draws carriage-return animations; in a log file (stderr not a terminal) those become
escape junk, so bars are disabled there and each stage prints its own one-line summaries.
"""

from __future__ import annotations

import sys
import warnings


def progress(iterable=None, **kwargs):
    """tqdm, disabled when stderr is not a terminal (unless the caller decides otherwise)."""
    from tqdm import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    return tqdm(iterable, **kwargs)


def quiet_libraries() -> None:
    """Silence known library noise at its source (messages that say nothing about the run)."""
    # torch.meshgrid without `indexing`, called inside laion_clap / torchlibrosa
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
