"""The one door to a model, whatever family its checkpoint belongs to.

`model.checkpoint` (through `data/models`) is `random` (LAION-CLAP with seeded random weights), an
official LAION-CLAP `.pt` file (`laion`) or a transformers `ClapModel` folder (`hf`, mapped onto
LAION's modules). The stages ask this module for the model and its front end; they never test
which family they hold.
"""

from __future__ import annotations

import os

from . import hf, laion
from .laion import MelFrontEnd, build_model, model_config


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
