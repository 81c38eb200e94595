"""The one door to a model, whatever family its checkpoint belongs to.

`model.checkpoint` (through `data/models`) is `random` (LAION-CLAP with seeded random weights), an
official LAION-CLAP `.pt` file, a transformers `ClapModel` folder (mapped onto LAION's modules) or
an MS-CLAP 2023 `.pth` file; a file's format is told by its content, not its name. The stages ask
this module for the model, its front end, what the model stage placed, the tokenizer and the text
side; they never test which family they hold.

A family is one module (`FAMILIES`): its model holds LAION's module names (`audio_branch`, an
HTS-AT; `audio_projection`; `text_branch`; `text_projection`) and says its family
(`model.family`), and the module gives the rest: `tokenize`, `text_features`, `load_tokenizer`,
`logit_scale`, `projection_weights`, its zero-shot `PROMPT` and its tokenizer's hub files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.params import ParamError
from . import hf, laion, msclap

# Shared by every family: the stages, the methods and the evaluation import these from here.
from .laion import (  # noqa: F401
    CheckpointError,
    MelFrontEnd,
    TokenizerError,
    build_model,
    checkpoint_from,
    mel_fingerprint,
    model_config,
)

FAMILIES = {"laion": laion, "msclap": msclap}  # a ClapModel folder is LAION's family (its modules, its text side)

__all__ = ["CheckpointError", "FAMILIES", "MelFrontEnd", "TokenizerError", "build_model", "checkpoint_from",
           "class_embeddings", "content_ids", "default_prompt", "default_tokenizer", "family_of", "front_end", "identity_file",
           "joint_dim", "load_model", "load_tokenizer", "logit_scale", "mel_fingerprint", "model_config",
           "own_tokenizer", "projection_weights", "prompt_start", "read_file", "resolve_checkpoint", "text_embedding", "text_features", "tokenize", "word_embeddings"]


def read_file(path: str | os.PathLike, mmap: bool = False) -> tuple[str, dict]:
    """The family and state dict of a checkpoint file, told apart by content: msclap's {'model': ...}
    or LAION's training checkpoint. Read with `weights_only` and the allow-list (`laion.safe_load`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    raw = laion.safe_load(path, mmap=mmap)
    if msclap.claims(raw):
        return "msclap", msclap.state_of(raw, path)
    return "laion", laion.state_of(raw, path)


def family_of(checkpoint) -> str:
    """The family of 'random', a ClapModel folder or a checkpoint file."""
    if str(checkpoint) == "random" or hf.is_folder(checkpoint):
        return "laion"
    return read_file(checkpoint, mmap=True)[0]


def load_model(checkpoint: str | os.PathLike, variant: str | None = None, seed: int = 0):
    """The model of `checkpoint`, frozen, in `eval()` (`random`: seeded random LAION-CLAP weights of `variant`)."""
    if str(checkpoint) == "random":
        model = build_model(variant or "tiny", seed=seed)
    elif hf.is_folder(checkpoint):
        model = hf.load(checkpoint, variant, seed=seed)
    else:
        family, state = read_file(checkpoint)
        if family == "msclap":
            if variant not in (None, "tiny"):
                raise CheckpointError(f"{checkpoint}: an MS-CLAP 2023 checkpoint holds HTSAT-tiny weights, "
                                      f"but HTSAT-{variant} was asked for (model.variant)")
            model = msclap.load_state(state, checkpoint, seed=seed)
        else:
            model = laion.load_file(checkpoint, variant, seed=seed, state=state)
    if not hasattr(model, "family"):
        model.family = "laion"
    return model


def front_end(checkpoint: str | os.PathLike, variant: str = "tiny") -> MelFrontEnd:
    """The log-mel front end of `checkpoint`'s model, without building the model."""
    if str(checkpoint) == "random":
        return MelFrontEnd(model_config(variant)["audio_cfg"])
    if hf.is_folder(checkpoint):  # ClapModel stores no STFT/mel weights: torchlibrosa's own
        return MelFrontEnd(hf.audio_cfg(checkpoint))
    family, state = read_file(checkpoint, mmap=True)
    if family == "msclap":
        return msclap.front_end(state, checkpoint)
    return MelFrontEnd.from_state(state, model_config(laion.variant_of(state, checkpoint))["audio_cfg"], checkpoint)


def _family(model):
    return FAMILIES[getattr(model, "family", "laion")]


def tokenize(model, tok, texts: list[str]) -> dict:
    """The family's text input for `texts` (ids and attention mask, as tensors)."""
    return _family(model).tokenize(tok, texts)


def text_features(model, input_ids, attention_mask, inputs_embeds=None) -> torch.Tensor:
    """The text encoder's pooled output before the text projection."""
    return _family(model).text_features(model, input_ids, attention_mask, inputs_embeds)


def content_ids(model, tok, text: str) -> list[int]:
    """The token ids of `text` without the family's special tokens."""
    return _family(model).content_ids(tok, text)


def word_embeddings(model):
    """The text encoder's token embedding table."""
    return _family(model).word_embeddings(model)


def prompt_start(model) -> int:
    """Index of a prompt's first word in the family's token ids (after <s>: 1; GPT-2: 0)."""
    return _family(model).PROMPT_START


@torch.no_grad()
def text_embedding(model, tokens: dict) -> torch.Tensor:
    """Normalised joint-space embeddings of tokenised texts: the family's pooled text features through
    the text projection."""
    device = next(model.parameters()).device
    out = text_features(model, tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
    return F.normalize(model.text_projection(out), dim=-1)


def class_embeddings(model, tok, labels: list[str], templates=None) -> torch.Tensor:
    """Zero-shot class vectors: each template filled with the label (underscores as spaces),
    embedded and normalised, averaged over templates, normalised again. Shape [classes, joint]."""
    from ..core.logs import progress

    family = _family(model)
    per_template = []
    for template in progress(list(templates or [family.PROMPT]), desc="text (templates)", unit="template"):
        texts = [template.format(label=label.replace("_", " ")) for label in labels]
        per_template.append(text_embedding(model, family.tokenize(tok, texts)))
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


def logit_scale(model) -> float:
    """The zero-shot temperature, as the family's model defines it."""
    return _family(model).logit_scale(model)


def projection_weights(model) -> dict:
    """The frozen audio projection's weights and kind, for `evaluation.zeroshot.FrozenHead`."""
    return _family(model).projection_weights(model)


def joint_dim(model) -> int:
    """Width of the joint audio–text space (LAION 512, MS-CLAP 1024)."""
    return int(model.audio_projection[-1].out_features if isinstance(model.audio_projection, torch.nn.Sequential)
               else model.audio_projection.out_features)


def load_tokenizer(model, directory: str | os.PathLike):
    """The tokenizer of `model`'s family from explicit vocab.json + merges.txt files, checked."""
    return _family(model).load_tokenizer(directory)


def default_prompt(family: str) -> str:
    """The family's own zero-shot prompt (`zeroshot.templates: auto`)."""
    return FAMILIES[family].PROMPT


def default_tokenizer(family: str) -> str:
    """Where the family's tokenizer files are on the hub (`model.tokenizer: auto`)."""
    return FAMILIES[family].TOKENIZER_BASE_URL


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
