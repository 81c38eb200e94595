"""The one door to a model, whatever family its checkpoint belongs to.

`model.checkpoint` (through `data/models`) is `random` (LAION-CLAP with seeded random weights), an
official LAION-CLAP `.pt` file (`laion`) or a transformers `ClapModel` folder (`hf`, mapped onto
LAION's modules). The stages ask this module for the model, its front end, what the model stage
placed, the tokenizer and the text side; they never test which family they hold.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.params import ParamError
from . import hf, laion
from .laion import MelFrontEnd, build_model, model_config
# What every family shares, since each maps its weights onto LAION-CLAP's modules: the stages, the
# methods and the evaluation import these from here, never from a family's module.
from .laion import (  # noqa: F401
    CheckpointError, TokenizerError, checkpoint_from, class_embeddings, load_tokenizer, logit_scale, mel_fingerprint,
    tokenize)

__all__ = ["CheckpointError", "MelFrontEnd", "TokenizerError", "build_model", "checkpoint_from", "class_embeddings",
           "front_end", "identity_file", "load_model", "load_tokenizer", "logit_scale", "mel_fingerprint", "model_config",
           "own_tokenizer", "resolve_checkpoint", "tokenize"]


def load_model(checkpoint: str | os.PathLike, variant: str | None = None, seed: int = 0):
    """The model of `checkpoint`, frozen, in `eval()` (`random`: seeded random weights of `variant`)."""
    if str(checkpoint) == "random":
        return build_model(variant or "tiny", seed=seed)
    if hf.is_folder(checkpoint):
        return hf.load(checkpoint, variant, seed=seed)
    return laion.load_file(checkpoint, variant, seed=seed)


def front_end(checkpoint: str | os.PathLike, variant: str = "tiny") -> MelFrontEnd:
    """The log-mel front end of `checkpoint`'s model, without building the model."""
    if str(checkpoint) == "random":
        return MelFrontEnd(model_config(variant)["audio_cfg"])
    if hf.is_folder(checkpoint):  # ClapModel stores no STFT/mel weights: torchlibrosa's own
        return MelFrontEnd(hf.audio_cfg(checkpoint))
    return MelFrontEnd.from_file(checkpoint)


def resolve_checkpoint(value, models_dir: str | os.PathLike) -> str:
    """What `model.checkpoint` = `value` stands for once the model stage has run: 'random', the
    placed `checkpoint.pt` or ClapModel folder under `models_dir`, or an existing local file or folder."""
    value = str(value)
    if value.strip().lower() == "random":
        return "random"
    downloaded = Path(models_dir) / "checkpoint.pt"
    if downloaded.is_file():
        return str(downloaded)
    if hf.is_folder(Path(models_dir) / hf.FOLDER):
        return str(Path(models_dir) / hf.FOLDER)
    if Path(value).is_file() or hf.is_folder(value):
        return value
    raise ParamError(f"params: 'model.checkpoint' {value!r}: no {downloaded} and no such local file (run the model stage)")


def identity_file(checkpoint) -> Path:
    """The file whose sha256 identifies `checkpoint` (a ClapModel folder: its weights file)."""
    return hf.identity_file(checkpoint)


def own_tokenizer(checkpoint) -> Path | None:
    """The tokenizer files that come with `checkpoint` (a ClapModel folder may hold its own), else None."""
    return None if str(checkpoint) == "random" or not hf.is_folder(checkpoint) else hf.tokenizer_dir(checkpoint)
