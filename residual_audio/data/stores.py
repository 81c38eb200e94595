"""Opening the pipeline's zarr stores for reading, with the checks every reader needs, so a
missing, unreadable or incomplete store fails the same clear way, naming the file."""

from __future__ import annotations

import os
from pathlib import Path


class StoreError(ValueError):
    """A store is missing, unreadable or lacks what its reader needs; the message names the file."""


def open_store(path: str | os.PathLike, arrays=(), attrs=(), kind: str = "store", hint: str = "",
               error: type[StoreError] = StoreError):
    """The zarr group at `path`, checked to hold `arrays` and attributes `attrs`."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise error(f"{path}: {kind} not found" + (f" ({hint})" if hint else ""))
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store path
        raise error(f"{path}: not a readable zarr store ({exc.__class__.__name__}: {exc})") from None
    for name in arrays:
        if name not in group:
            raise error(f"{path}: missing array '{name}'")
    for key in attrs:
        if key not in group.attrs:
            raise error(f"{path}: missing attribute '{key}'")
    return group
