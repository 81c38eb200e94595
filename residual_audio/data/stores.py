"""Opening the pipeline's zarr stores for reading, with the checks every reader needs, so a
missing, unreadable or incomplete store fails the same clear way, naming the file.

zarr reads a chunk whose file is missing as the fill value (zeros), silently. So every writer
*seals* its store when it is complete (`seal`): the store records its format version and, per
array, how many chunks were written. Every reader (`open_store`) counts them again and refuses a
store with a chunk missing (or added), or without the record (written by an older version, or by
hand), in one line naming the file and the stage that rewrites it."""

from __future__ import annotations

import os
from pathlib import Path


class StoreError(ValueError):
    """A store is missing, unreadable or lacks what its reader needs; the message names the file."""


FORMAT = 1  # the store format the readers accept (attribute `format`)


def _arrays(group, prefix: str = ""):
    for name, member in sorted(group.members()):
        if hasattr(member, "members"):
            yield from _arrays(member, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", member


def chunk_record(group) -> dict[str, int]:
    """Per array (by path), the number of its chunks that are stored."""
    return {name: int(array.nchunks_initialized) for name, array in _arrays(group)}


def seal(group) -> None:
    """Mark a complete store: its format version and the chunks each array holds."""
    group.attrs.update(format=FORMAT, chunks=chunk_record(group))


def verify(group, path: Path, error: type[StoreError] = StoreError, hint: str = "") -> None:
    """Refuse a store that is not sealed, is of another format, or lost (or gained) a chunk."""
    again = f"; {hint}" if hint else ""
    fmt, recorded = group.attrs.get("format"), group.attrs.get("chunks")
    if fmt is None or not isinstance(recorded, dict):
        raise error(f"{path}: no chunk record (written by an older version of the pipeline, or not by it){again}")
    if fmt != FORMAT:
        raise error(f"{path}: store format {fmt!r}, but this version reads format {FORMAT}{again}")
    found = chunk_record(group)
    for name in sorted(set(recorded) | set(found)):
        want, got = recorded.get(name), found.get(name)
        if want is None or got is None:
            raise error(f"{path}: array '{name}' is {'missing' if got is None else 'not in the chunk record'}{again}")
        if got != want:
            raise error(f"{path}: array '{name}' holds {got} of the {want} chunks written (a chunk file is "
                        f"{'missing' if got < want else 'extra'}; zarr would read a missing one as zeros){again}")


def open_store(path: str | os.PathLike, arrays=(), attrs=(), kind: str = "store", hint: str = "",
               error: type[StoreError] = StoreError):
    """The zarr group at `path`, sealed and complete (`verify`), holding `arrays` and attributes `attrs`."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise error(f"{path}: {kind} not found" + (f" ({hint})" if hint else ""))
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store path
        raise error(f"{path}: not a readable zarr store ({exc.__class__.__name__}: {exc})") from None
    verify(group, path, error, hint)
    for name in arrays:
        if name not in group:
            raise error(f"{path}: missing array '{name}'")
    for key in attrs:
        if key not in group.attrs:
            raise error(f"{path}: missing attribute '{key}'")
    return group


def read_npz(path: str | os.PathLike, error: type[ValueError], hint: str, required=()) -> dict:
    """Every array of the .npz file at `path` (no pickles), or `error` in one line naming the file:
    not found, not a readable npz (truncated, not a zip, pickled objects), or lacking a `required` key."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: not found ({hint})")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise error(f"{path}: not a readable .npz file ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    f"{hint}") from None
    require(path, arrays, error, hint, required)
    return arrays


def require(path, arrays: dict, error: type[ValueError], hint: str, keys) -> None:
    """Refuse a file read with `read_npz` that lacks any of `keys` (a second set, once the first tells which)."""
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise error(f"{path}: missing array(s) {', '.join(map(repr, missing))}; {hint}")


def check_finite(path, arrays: dict, error: type[ValueError], hint: str, keys=None) -> None:
    """Refuse NaN or inf in the float arrays `keys` (default: all) of a file read with `read_npz`."""
    import numpy as np

    for key in arrays if keys is None else keys:
        value = arrays[key]
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise error(f"{path}: array '{key}' holds NaN or inf; {hint}")
