"""Console output of the stages: progress that reads well in a terminal and in a log, and quiet libraries.

In a terminal, `progress` is a tqdm bar. In a log (stderr not a terminal: `dvc repro`, a CI job,
`nohup`), tqdm's carriage-return animation would be junk, so `progress` is a `LogLine` instead: the
same interface, writing a dated one-line status (`done/total`, elapsed, time left, the current
step) at most every `INTERVAL` seconds across all open bars, and at every boundary a stage marks
(`boundary=True`: each method × fold of `train`, each shot × seed of `fewshot`).
"""

from __future__ import annotations

import sys
import time
import warnings
from datetime import datetime

INTERVAL = 10.0  # seconds between two status lines in a log
_last = [0.0]  # when any LogLine last wrote (one rate for every bar of the process)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LogLine:
    """tqdm's interface (iterate, `update`, `set_postfix_str`, `set_postfix`, `close`, `with`) for logs."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", leave: bool = True,
                 disable: bool | None = False, boundary: bool = False, unit_scale: bool = False, **_):
        self.iterable, self.desc, self.unit, self.leave = iterable, desc, unit, leave
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.disable, self.boundary = bool(disable), boundary
        self.n, self.postfix, self.start = 0, "", time.monotonic()
        self.bytes = unit_scale and unit == "B"  # shown in MiB

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        def count(v):
            return f"{v / 2**20:.1f}" if self.bytes else f"{v}"

        done = f"{count(self.n)}/{count(self.total)}" if self.total is not None else count(self.n)
        timing = _duration(elapsed)
        if self.total and 0 < self.n < self.total:
            timing += f", about {_duration(elapsed / self.n * (self.total - self.n))} left"
        step = f" · {self.postfix}" if self.postfix else ""
        unit = "MiB" if self.bytes else self.unit
        return f"{datetime.now():%Y-%m-%d %H:%M:%S} {self.desc}: {done} {unit} ({timing}){step}"

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.disable or not (force or now - _last[0] >= INTERVAL):
            return
        _last[0] = now
        print(self.line(), file=sys.stderr, flush=True)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._write()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = str(text)
        self._write(force=self.boundary)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items.items())
        self._write()

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.leave and not self.disable and self.total is not None and self.n >= self.total > 0:
            self._write(force=True)
        self.disable = True  # once

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable=None, **kwargs):
    """A tqdm bar in a terminal, a `LogLine` in a log. `disable=None` (tqdm's "only in a terminal")
    counts as enabled: a log gets its status lines too. `boundary=True` marks every
    `set_postfix_str` as a step worth a line (in a terminal it just updates the bar)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        kwargs.pop("boundary", None)  # a bar shows every step anyway
        return tqdm(iterable, **kwargs)  # disable=None: on, in a terminal
    return LogLine(iterable, **kwargs)


def quiet_libraries() -> None:
    """Silence known library noise at its source (messages that say nothing about the run)."""
    # torch.meshgrid without `indexing`, called inside laion_clap / torchlibrosa
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
