"""The one reader of the mel store, `data/mel/<dataset>.zarr` (written by the `preprocess` stage)."""

from __future__ import annotations

import os
from pathlib import Path

from .stores import StoreError, open_store

MEL_SHAPE = (1001, 64)  # frames × mel bins of one 10 s clip


class MelStoreError(StoreError):
    """The mel store is missing, malformed, empty, or made with other mel settings than the model's."""


def open_mel_store(path: str | os.PathLike):
    """The mel store's group, sealed and complete, with its clip table checked: one row per clip."""
    path = Path(path)
    group = open_store(path, arrays=("mel", "clip_id", "label", "fold"), attrs=("classes", "mel_sha256"),
                       kind="mel store", hint="run the preprocess stage", error=MelStoreError)
    mel = group["mel"]
    if mel.ndim != 3 or tuple(mel.shape[1:]) != MEL_SHAPE:
        raise MelStoreError(f"{path}: 'mel' has shape {tuple(mel.shape)}, expected [N, {MEL_SHAPE[0]}, {MEL_SHAPE[1]}]")
    n = mel.shape[0]
    if n == 0:
        raise MelStoreError(f"{path}: the dataset is empty (0 clips)")
    for key in ("clip_id", "label", "fold"):
        if group[key].shape != (n,):
            raise MelStoreError(f"{path}: '{key}' has shape {tuple(group[key].shape)}, expected ({n},)")
    return group
