"""What a stage run actually used: the package modules it imported and the params keys it read.

Off unless `RESIDUAL_AUDIO_TRACE` names a folder (this module is then imported only for it, and
is no stage's dep). Then `stage.execute` hands the stage a
`ReadRecorder` in place of the params mapping (after the whole-file schema check, so the
check's own reads do not count) and, when the stage succeeds, merges into
`<folder>/<stage label>.json` the dotted keys read and the package modules in `sys.modules`.
The deps test (tests/test_stage_deps.py) holds these against each stage's `deps` and `params`
in dvc.yaml, so that DVC re-runs a stage exactly when something it uses changes.

A key counts as read when its value is taken (`m[k]`, `m.get(k)`) and is not itself a mapping;
iterating over a mapping, or copying it, reads the whole subtree under its key.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ENV = "RESIDUAL_AUDIO_TRACE"
PACKAGE = __name__.split(".")[0]


class ReadRecorder(dict):
    """A params mapping that records the dotted keys read through it into `reads`."""

    def __init__(self, data: dict, reads: set, prefix: str = ""):
        super().__init__({k: ReadRecorder(v, reads, f"{prefix}{k}.") if isinstance(v, dict) else v
                          for k, v in data.items()})
        self._reads, self._prefix = reads, prefix

    def _took(self, key, value):
        if not isinstance(value, ReadRecorder):
            self._reads.add(f"{self._prefix}{key}")
        return value

    def _whole(self):
        self._reads.add(self._prefix.rstrip(".") or "*")

    def __getitem__(self, key):
        return self._took(key, super().__getitem__(key))

    def get(self, key, default=None):
        return self._took(key, super().__getitem__(key)) if key in self else default

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def keys(self):
        self._whole()
        return super().keys()

    def values(self):
        self._whole()
        return super().values()

    def items(self):
        self._whole()
        return super().items()

    def copy(self):
        self._whole()
        return plain(self)


def plain(value):
    """A `ReadRecorder` tree as plain dicts (for writing out)."""
    if isinstance(value, ReadRecorder):
        return {k: plain(v) for k, v in dict.items(value)}
    return value


def package_modules() -> list[str]:
    """Files (relative to the repository) of every package module imported so far."""
    root = Path(sys.modules[PACKAGE].__file__).resolve().parent.parent
    files = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == PACKAGE or name.startswith(PACKAGE + ".")) and path:
            files.add(Path(path).resolve().relative_to(root).as_posix())
    return sorted(files)


def start(params: dict) -> tuple[dict, set]:
    """(the mapping to hand the stage, the set its reads go to)."""
    reads: set = set()
    return ReadRecorder(params, reads), reads


def finish(label: str, reads: set) -> None:
    """Merge this run's reads and modules into `$RESIDUAL_AUDIO_TRACE/<label>.json`."""
    path = Path(os.environ[ENV]) / f"{label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else {"params": [], "modules": []}
    path.write_text(json.dumps({"params": sorted(set(old["params"]) | reads),
                                "modules": sorted(set(old["modules"]) | set(package_modules()))}, indent=1))
