"""Long stages resume: the finished units of work of a stage (`train`: method × fold; `fewshot`:
method × fold × seed × shots) are cached as they finish, so a killed run restarts from the last one.

Each unit is one file, `.residual_audio/partial/<stage>/<dataset>/<key>.npz`, written atomically.
Its key is a hash of everything its result depends on: the stage's inputs (`inputs`, digests of
the heads store's arrays, the text side, the package's source and whatever else the stage names)
and the unit's own description (the method, its hyper-parameters, its seed and its clips). Change
any of them and the cached unit no longer matches: it is computed again. The folder is removed once
the stage has written its outputs, so it holds only the units of an unfinished run.
Files are plain arrays and JSON (no pickle); a cached file that cannot be read is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

PARTIAL_DIR = Path(".residual_audio") / "partial"
_JSON = "__json__"


def _canonical(obj):
    """`obj` as JSON-able data, numpy arrays replaced by a digest of their dtype, shape and bytes."""
    import dataclasses

    if isinstance(obj, np.ndarray):
        return {"array": array_digest(obj)}
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def array_digest(*arrays) -> str:
    """blake2b of each array's dtype, shape and bytes, in order."""
    h = hashlib.blake2b(digest_size=20)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        if a.dtype.kind in "OU":
            h.update(json.dumps(a.tolist()).encode())
        else:
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def digest(obj) -> str:
    """A stable hash of nested dicts, lists, scalars, dataclasses and numpy arrays."""
    return hashlib.sha256(json.dumps(_canonical(obj), sort_keys=True, default=str).encode()).hexdigest()


def code_digest() -> str:
    """Hash of every Python source file of the package (a code change invalidates cached units)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class Resume:
    """The cached units of one stage on one dataset; `get(unit)` / `put(unit, arrays, info)`."""

    def __init__(self, stage: str, dataset: str, inputs: dict, root: Path = PARTIAL_DIR):
        self.dir = Path(root) / stage / dataset
        self.inputs = digest({"inputs": inputs, "code": code_digest()})
        self.reused = 0

    def _path(self, unit: dict) -> Path:
        return self.dir / f"{digest({'inputs': self.inputs, 'unit': unit})[:40]}.npz"

    def get(self, unit: dict) -> tuple[dict, dict] | None:
        """(arrays, info) of a finished unit, or None when it has not finished (or its file is unreadable)."""
        path = self._path(unit)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            info = json.loads(str(arrays.pop(_JSON)))
        except Exception:  # noqa: BLE001  (a torn or foreign file is recomputed, not trusted)
            return None
        self.reused += 1
        return arrays, info

    def put(self, unit: dict, arrays: dict, info: dict) -> None:
        """Write a finished unit now (not at the stage's commit: a run killed later must still find it)."""
        path = self._path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **{_JSON: np.array(json.dumps(info))})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def finish(self) -> None:
        """The stage wrote its outputs: its cached units are no longer needed."""
        shutil.rmtree(self.dir, ignore_errors=True)
