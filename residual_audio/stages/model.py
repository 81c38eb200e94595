"""The `model` stage: the checkpoint and the tokenizer files into data/models/, fetched once."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.params import ParamError, get
from ..data.fetch import (
    OFFICIAL_CHECKPOINTS,
    OFFICIAL_SHA256,
    OFFLINE_HINTS,
    REFUSED_CHECKPOINTS,
    NetworkError,
    _against,
    check_local_sources,
    fetch_model,
)
from ..data.paths import MODELS_DIR
from ..models.checkpoints import FAMILIES, default_tokenizer


def run(params: dict, workdir: str | os.PathLike = ".") -> dict:
    """The `model` stage: the checkpoint and the tokenizer files into data/models/ (both sources
    checked before anything is written; an official file name is checked against its published sha256)."""
    workdir = Path(workdir)
    checkpoint = get(params, "model.checkpoint")
    checkpoint_sha256 = get(params, "model.checkpoint_sha256")
    if isinstance(checkpoint, str) and checkpoint in REFUSED_CHECKPOINTS and not (workdir / checkpoint).exists():
        raise ParamError(f"params: 'model.checkpoint' {checkpoint}: {REFUSED_CHECKPOINTS[checkpoint]}")
    if isinstance(checkpoint, str) and checkpoint in OFFICIAL_CHECKPOINTS and not (workdir / checkpoint).exists():
        published = OFFICIAL_SHA256.get(checkpoint)
        if published and checkpoint_sha256 and str(checkpoint_sha256).lower() != published:
            raise ParamError(f"params: 'model.checkpoint_sha256' is {checkpoint_sha256}, but {checkpoint} is published "
                             f"with sha256 {published}")
        checkpoint_sha256 = checkpoint_sha256 or published
        checkpoint = OFFICIAL_CHECKPOINTS[checkpoint]  # an official file name stands for its URL
    tokenizer = _against(workdir, get(params, "model.tokenizer"))
    checkpoint = _against(workdir, checkpoint)
    check_local_sources([("model.checkpoint", checkpoint), ("model.tokenizer", tokenizer)])
    try:
        return fetch_model(checkpoint, tokenizer, workdir / MODELS_DIR, checkpoint_sha256)
    except NetworkError as exc:
        urls = ([default_tokenizer(f) for f in FAMILIES] if str(tokenizer).strip().lower() == "auto"
                else [str(tokenizer)] if tokenizer else [])
        key = "tokenizer" if any(u.rstrip("/") in str(exc) for u in urls) else "checkpoint"
        raise NetworkError(f"model.{key}: {exc}; {OFFLINE_HINTS[key]}") from None
