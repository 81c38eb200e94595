"""Atomic outputs: every output is written to a temporary sibling and renamed at the end,
so an interrupted or failed run never leaves a half-written file or store behind.

Inside a `transaction()` (every stage runs in one, see `stage.main`) the final renames of
all outputs are deferred and done together once the whole stage has succeeded: on any
error the previous outputs stay exactly as they were. Before the renames start, the
list of renames is written to a journal; a run killed in the middle of them is rolled
forward by the next run, so a crash leaves either the old set of outputs or the new one.

Temporaries are named after the process that writes them (`.<name>.tmp-<pid>-<hex>`,
`.<name>.old-<pid>-<hex>`); leftovers of a process that no longer exists are removed,
those of a live run never.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

# Where runs record their temporaries and commit journals (relative to the project folder).
RUNS_DIR = Path(".residual_audio") / "runs"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")
_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_current: "Transaction | None" = None


_TEMPORARY = re.compile(r"(^|/)\.([^/]+)\.(?:tmp|old)-\d+-[0-9a-f]+(?=/|$)")


def user_path(path) -> str:
    """`path` with any temporary sibling (`.<name>.tmp-<pid>-<hex>`) shown as the final name it stands for."""
    return _TEMPORARY.sub(lambda m: m.group(1) + m.group(2), os.fsdecode(path))


class OutOfSpaceError(RuntimeError):
    """Writing an output failed for lack of disk space (or a file-size limit); names the path."""


def is_out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _OUT_OF_SPACE


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sibling(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale(final: str | os.PathLike) -> list[Path]:
    """Remove `.<name>.tmp-*` / `.old-*` siblings of `final` left by processes that no longer exist.

    Leftovers of a dead run whose commit journal is still pending are left for `recover`.
    """
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    pending = {int(p.stem.rsplit("-", 1)[-1]) for p in RUNS_DIR.glob("*.jsonl") if p.stem.rsplit("-", 1)[-1].isdigit()}
    for path in final.parent.glob(f".{glob_escape(final.name)}.*-*"):
        m = _LEFTOVER.match(path.name)
        if m is None or m["name"] != final.name:
            continue
        pid = int(m["pid"]) if m["pid"] else None  # no pid: written by an earlier version, before PIDs
        if pid is not None and (pid in pending or pid_alive(pid)):
            continue
        _remove(path)
        removed.append(path)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path next to `final`; move it into place only if the block succeeds.

    Works for files and directories (zarr stores). On any exception the temporary
    output is deleted and `final` is left exactly as it was. Inside a transaction the
    move waits for the transaction's commit. Running out of disk space raises
    OutOfSpaceError naming `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = _sibling(final, "tmp")
    if _current is not None:
        _current.record(tmp)
    keep = False
    try:
        try:
            yield tmp
        except OSError as exc:
            if is_out_of_space(exc):
                raise OutOfSpaceError(f"{user_path(final)}: out of disk space") from None
            raise
        if not tmp.exists():
            raise RuntimeError(f"{final}: nothing was written")
        if _current is not None:
            _current.defer(tmp, final)
            keep = True
        else:
            _swap([(tmp, final, _sibling(final, "old"))])
    finally:
        if not keep and (tmp.exists() or tmp.is_symlink()):
            _remove(tmp)


def _swap(moves: list[tuple[Path, Path, Path]]) -> None:
    """Move each tmp onto its final (the previous final is moved aside, then removed).

    Idempotent given the state on disk, so it also rolls an interrupted commit forward.
    """
    for tmp, final, old in moves:
        if tmp.exists() or tmp.is_symlink():
            if (final.exists() or final.is_symlink()) and not (old.exists() or old.is_symlink()):
                os.replace(final, old)
            os.replace(tmp, final)
    for _, _, old in moves:
        if old.exists() or old.is_symlink():
            _remove(old)


class Transaction:
    """The outputs of one stage run, moved into place together (see the module docstring)."""

    def __init__(self, runs_dir: Path = RUNS_DIR, name: str = "run"):
        self.pending: dict[Path, Path] = {}  # final -> tmp
        runs_dir.mkdir(parents=True, exist_ok=True)
        self.log = runs_dir / f"{name}-{os.getpid()}.jsonl"
        self.log.write_text("")

    def _append(self, record: dict) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def record(self, tmp: Path) -> None:
        """Note a temporary before it is created, so a killed run's leftovers can be found."""
        self._append({"tmp": str(tmp.absolute())})

    def defer(self, tmp: Path, final: Path) -> None:
        final = final.absolute()
        earlier = self.pending.pop(final, None)
        if earlier is not None:
            _remove(earlier)
        self.pending[final] = tmp.absolute()

    def commit(self) -> None:
        moves = [(tmp, final, _sibling(final, "old")) for final, tmp in self.pending.items()]
        self._append({"commit": [[str(t), str(f), str(o)] for t, f, o in moves]})
        _swap(moves)
        self.pending.clear()

    def rollback(self) -> None:
        for tmp in self.pending.values():
            _remove(tmp)
        self.pending.clear()

    def close(self) -> None:
        self.log.unlink(missing_ok=True)
        for folder in (self.log.parent, self.log.parent.parent):  # leave no empty bookkeeping folders
            with contextlib.suppress(OSError):
                folder.rmdir()


def recover(runs_dir: Path = RUNS_DIR) -> list[str]:
    """Finish what runs that no longer exist left behind: roll a journalled commit forward,
    delete every other temporary they recorded. Returns a line per run cleaned up."""
    done = []
    for log in sorted(Path(runs_dir).glob("*.jsonl")):
        pid = log.stem.rsplit("-", 1)[-1]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        temporaries, commit = [], None
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a record cut short by the crash: nothing after it happened
            if "tmp" in record:
                temporaries.append(Path(record["tmp"]))
            elif "commit" in record:
                commit = [tuple(Path(p) for p in move) for move in record["commit"]]
        if commit is not None:
            _swap(commit)
        for tmp in temporaries:
            _remove(tmp)
        log.unlink(missing_ok=True)
        done.append(f"{log.name}: " + ("commit rolled forward" if commit else f"{len(temporaries)} temporaries removed"))
    return done


@contextlib.contextmanager
def transaction(name: str = "run", runs_dir: Path = RUNS_DIR):
    """Defer the final renames of every `atomic_path` in the block and do them together at its end.

    Nested use joins the outer transaction. On any exception nothing is moved into place.
    """
    global _current
    if _current is not None:
        yield _current
        return
    recover(runs_dir)
    txn = Transaction(Path(runs_dir), name)
    _current = txn
    try:
        yield txn
    except BaseException:
        _current = None
        txn.rollback()
        txn.close()
        raise
    _current = None
    txn.commit()  # if this fails half-way, the journal stays for the next run to roll forward
    txn.close()


def write_json(path: str | os.PathLike, obj, **kwargs) -> None:
    """Write JSON atomically with sorted keys, so reruns are byte-identical."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True, **kwargs) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
