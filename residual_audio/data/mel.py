"""The one reader of the mel store, `data/mel/<dataset>.zarr` (written by the `preprocess` stage)."""

from __future__ import annotations

import os
from pathlib import Path

from .stores import StoreError, open_store

def mel_shape(audio: dict) -> tuple[int, int]:
    """Frames × mel bins of one clip under a store's recorded audio settings (centred STFT frames):
    LAION-CLAP's 10 s at 48 kHz, hop 480: 1001 × 64; MS-CLAP's 7 s at 44.1 kHz, hop 320: 965 × 64."""
    return int(audio["clip_samples"]) // int(audio["hop_size"]) + 1, int(audio["mel_bins"])


class MelStoreError(StoreError):
    """The mel store is missing, malformed, empty, or made with other mel settings than the model's."""


def open_mel_store(path: str | os.PathLike):
    """The mel store's group, sealed and complete, with its clip table checked: one row per clip."""
    path = Path(path)
    group = open_store(path, arrays=("mel", "clip_id", "label", "fold"), attrs=("classes", "mel_sha256", "audio"),
                       kind="mel store", hint="run the preprocess stage", error=MelStoreError)
    mel = group["mel"]
    try:
        shape = mel_shape(group.attrs["audio"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise MelStoreError(f"{path}: attribute 'audio' lacks clip_samples, hop_size or mel_bins; "
                            "run the preprocess stage") from None
    if mel.ndim != 3 or tuple(mel.shape[1:]) != shape:
        raise MelStoreError(f"{path}: 'mel' has shape {tuple(mel.shape)}, expected [N, {shape[0]}, {shape[1]}] "
                            "(its audio settings)")
    n = mel.shape[0]
    if n == 0:
        raise MelStoreError(f"{path}: the dataset is empty (0 clips)")
    for key in ("clip_id", "label", "fold"):
        if group[key].shape != (n,):
            raise MelStoreError(f"{path}: '{key}' has shape {tuple(group[key].shape)}, expected ({n},)")
    return group
