"""Hugging Face `transformers.ClapModel` checkpoints, mapped onto LAION's `CLAP`.

A ClapModel folder (`config.json` plus `model.safetensors` or `pytorch_model.bin`, as
`save_pretrained` writes it and as `laion/clap-htsat-unfused` holds it) is loaded into the
same LAION module the rest of the pipeline runs, so hook points, the decomposition and
inject mode work unchanged. The architecture (widths, depths, heads, window, MLP ratio,
LayerNorm eps of both towers, projection sizes) is built from `config.json`; safetensors
load without pickle, `pytorch_model.bin` only with ``torch.load(weights_only=True)``.

ClapModel stores no STFT/mel weights: the mel front end is torchlibrosa's, built from
LAION's audio settings for the matching HTS-AT variant (48 kHz, 1024/480, 64 mels,
50-14000 Hz), exactly as LAION's own model builds it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from .laion import VARIANTS, CheckpointError, build_model, check_finite_weights, check_state_keys

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
TOKENIZER_FILES = ("vocab.json", "merges.txt")
AUDIO = "audio_model.audio_encoder."

# LAION parameters a ClapModel does not hold: the frozen STFT/mel weights (recomputed by
# torchlibrosa), buffers derived from the shapes, the AudioSet head and the training-only
# MLP transforms. None of them enter the audio or text embeddings.
NOT_IN_CLAPMODEL = re.compile(
    r"audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\.|"
    r"\.attn_mask$|\.relative_position_index$|^(audio|text)_transform\."
)
BLOCK_PARTS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def is_folder(path) -> bool:
    """A checkpoint given as a folder holding `config.json` is a Hugging Face model folder."""
    return str(path) != "random" and Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def weights_file(folder: str | os.PathLike) -> Path:
    """The folder's weights: model.safetensors, else pytorch_model.bin."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    sharded = sorted(p.name for p in folder.glob("*.index.json"))
    extra = f" (sharded checkpoints such as {sharded[0]} are not supported)" if sharded else ""
    raise CheckpointError(f"{folder}: no {' or '.join(WEIGHT_FILES)} found next to {CONFIG}{extra}")


def read_config(folder: str | os.PathLike):
    """The folder's `transformers.ClapConfig`; refuses other models and fused ClapModels."""
    from transformers import ClapConfig

    path = Path(folder) / CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    archs = raw.get("architectures") or []
    if raw.get("model_type") != "clap" and "ClapModel" not in archs:
        raise CheckpointError(
            f"{path}: model_type {raw.get('model_type')!r}, architectures {archs}: not a transformers ClapModel")
    audio = raw.get("audio_config") or {}
    if audio.get("enable_fusion") or raw.get("enable_fusion"):
        raise CheckpointError(f"{path}: enable_fusion is true (a fused ClapModel); only unfused models are supported")
    try:
        config = ClapConfig.from_dict(raw)
    except Exception as exc:  # transformers validates types and values with several exception types
        raise CheckpointError(f"{path}: not a valid ClapConfig ({exc.__class__.__name__}: {exc})") from None
    check_supported(config, path)
    return config


# The sizes a ClapModel config may give, from the known architectures of the family with room
# around them: laion/clap-htsat-unfused (HTSAT-tiny, RoBERTa-base) and larger_clap_* (HTSAT-base).
# Checked before any tensor is built, so an absurd size is one line instead of an out-of-memory kill.
BOUNDS = {
    "audio_config.depths": (1, 24),  # blocks per stage (each entry); 4 stages
    "audio_config.num_attention_heads": (1, 64),  # per stage (each entry)
    "audio_config.patch_embeds_hidden_size": (16, 512),
    "audio_config.hidden_size": (16, 4096),
    "audio_config.window_size": (1, 64),
    "audio_config.spec_size": (64, 1024),
    "audio_config.patch_size": (1, 32),
    "audio_config.num_mel_bins": (16, 256),
    "audio_config.mlp_ratio": (1, 16),
    "audio_config.num_classes": (1, 10000),
    "audio_config.projection_dim": (1, 4096),
    "text_config.vocab_size": (1000, 300000),
    "text_config.hidden_size": (64, 4096),
    "text_config.num_hidden_layers": (1, 48),
    "text_config.num_attention_heads": (1, 64),
    "text_config.intermediate_size": (64, 16384),
    "text_config.max_position_embeddings": (16, 8192),
    "text_config.type_vocab_size": (1, 16),
    "text_config.projection_dim": (1, 4096),
}
STAGES = 4  # HTS-AT's stages (LAION's patch merging and the hooks assume four)


def check_bounds(config, path) -> None:
    """Every size of `config` within `BOUNDS`, and four audio stages, or one line naming the key."""
    if len(config.audio_config.depths) != STAGES:
        raise CheckpointError(f"{path}: audio_config.depths has {len(config.audio_config.depths)} stages; "
                              f"HTS-AT has {STAGES}")
    for key, (lo, hi) in BOUNDS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise CheckpointError(f"{path}: {key} is {value!r}; a ClapModel of this family has {lo}..{hi}")
    a, t = config.audio_config, config.text_config
    for i, heads in enumerate(a.num_attention_heads):
        width = a.patch_embeds_hidden_size * 2**i
        if width % heads:
            raise CheckpointError(f"{path}: audio_config.num_attention_heads[{i}] = {heads} does not divide "
                                  f"stage {i}'s width {width}")
    if t.hidden_size % t.num_attention_heads:
        raise CheckpointError(f"{path}: text_config.num_attention_heads {t.num_attention_heads} does not divide "
                              f"text_config.hidden_size {t.hidden_size}")


def check_supported(config, path) -> None:
    """Refuse settings LAION's modules cannot express, naming the key."""
    check_bounds(config, path)
    a, t = config.audio_config, config.text_config
    wants = {
        "audio_config.hidden_act": (a.hidden_act, "gelu"),
        "audio_config.projection_hidden_act": (a.projection_hidden_act, "relu"),
        "text_config.projection_hidden_act": (t.projection_hidden_act, "relu"),
        "audio_config.patch_embed_input_channels": (a.patch_embed_input_channels, 1),
        "audio_config.flatten_patch_embeds": (a.flatten_patch_embeds, True),
    }
    for key, (got, want) in wants.items():
        if got != want:
            raise CheckpointError(f"{path}: {key} is {got!r}; LAION's CLAP needs {want!r}")
    width = a.patch_embeds_hidden_size * 2 ** (len(a.depths) - 1)
    if a.hidden_size != width:
        raise CheckpointError(f"{path}: audio_config.hidden_size {a.hidden_size} is not "
                              f"patch_embeds_hidden_size·2^(stages-1) = {width}")
    if a.projection_dim != t.projection_dim:
        raise CheckpointError(f"{path}: audio and text projection_dim differ ({a.projection_dim} vs {t.projection_dim})")
    if len(a.num_attention_heads) != len(a.depths):
        raise CheckpointError(f"{path}: audio_config.num_attention_heads and depths have different lengths")
    variant_of(config, path)


def variant_of(config, path="config.json") -> str:
    """The HTS-AT variant whose audio settings (sample rate, STFT, mel range) apply: by final width."""
    width = config.audio_config.hidden_size
    for name, spec in VARIANTS.items():
        if spec["embed_dim"] == width:
            return name
    known = ", ".join(f"{spec['embed_dim']} ({name})" for name, spec in VARIANTS.items())
    raise CheckpointError(f"{path}: audio_config.hidden_size {width} matches no HTS-AT variant (known: {known})")


def audio_cfg(folder: str | os.PathLike) -> dict:
    """LAION's audio settings (mel front end) for the folder's model."""
    from .laion import model_config

    config = read_config(folder)
    cfg = dict(model_config(variant_of(config, Path(folder) / CONFIG))["audio_cfg"])
    cfg["mel_bins"] = config.audio_config.num_mel_bins
    return cfg


def read_state(folder: str | os.PathLike) -> dict:
    """The ClapModel state dict: safetensors without pickle, or a .bin with weights_only=True."""
    path = weights_file(folder)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise many types for a bad file
        raise CheckpointError(f"{path}: not a readable weights file ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state dict")
    check_finite_weights(state, path)
    return state


# --------------------------------------------------------------------------- the mapping


def _qkv(state: dict, prefix: str) -> dict:
    """ClapModel's separate query/key/value as LAION's fused `qkv` (rows q, k, v)."""
    out = {}
    for kind in ("weight", "bias"):
        parts = [state.get(f"{prefix}attention.self.{p}.{kind}") for p in ("query", "key", "value")]
        if all(p is not None for p in parts):
            out[f"qkv.{kind}"] = torch.cat(parts, 0)
    return out


def to_laion(state: dict, path="weights") -> dict:
    """Rename a ClapModel state dict onto LAION's CLAP keys; refuse keys of an unknown layout."""
    out, used = {}, set()

    def take(src, dst):
        out[dst] = state[src]
        used.add(src)

    for key in state:
        if key in ("logit_scale_a", "logit_scale_t"):
            take(key, key)
        elif key.startswith("text_model."):
            rest = key[len("text_model."):]
            if rest in ("embeddings.position_ids", "embeddings.token_type_ids"):
                used.add(key)  # derived buffers, rebuilt by the model
            else:
                take(key, "text_branch." + rest)
        elif m := re.fullmatch(r"(text|audio)_projection\.linear([12])\.(weight|bias)", key):
            take(key, f"{m[1]}_projection.{0 if m[2] == '1' else 2}.{m[3]}")
        elif key.startswith(AUDIO):
            rest = key[len(AUDIO):]
            if rest.startswith("batch_norm."):
                take(key, "audio_branch.bn0." + rest[len("batch_norm."):])
            elif rest.startswith(("patch_embed.proj.", "patch_embed.norm.", "norm.")) or re.fullmatch(
                    r"layers\.\d+\.downsample\.(reduction|norm)\.\w+", rest):
                take(key, "audio_branch." + rest)
            elif m := re.fullmatch(r"(layers\.\d+\.blocks\.\d+\.)(.+)\.(weight|bias|relative_position_bias_table)", rest):
                block, part, kind = m[1], m[2], m[3]
                if kind == "relative_position_bias_table":
                    part, kind = f"{part}.{kind}", None
                if part in BLOCK_PARTS:
                    take(key, f"audio_branch.{block}{BLOCK_PARTS[part]}" + (f".{kind}" if kind else ""))
                elif part in ("attention.self.query", "attention.self.key", "attention.self.value"):
                    used.add(key)  # fused below
            elif re.fullmatch(r"layers\.\d+\.blocks\.\d+\.attention\.self\.relative_position_index", rest):
                used.add(key)  # a derived buffer; LAION computes the same index
    for block in sorted({m[1] for k in state if (m := re.match(re.escape(AUDIO) + r"(layers\.\d+\.blocks\.\d+\.)", k))}):
        for name, value in _qkv(state, AUDIO + block).items():
            out[f"audio_branch.{block}attn.{name}"] = value
    unknown = sorted(set(state) - used)
    if unknown:
        raise CheckpointError(f"{path}: unknown ClapModel layout: {len(unknown)} key(s) not understood, e.g. {unknown[0]!r}")
    return out


# --------------------------------------------------------------------------- building and loading


def build(config, seed: int = 0):
    """LAION's CLAP with every architectural setting taken from a ClapConfig (weights random)."""
    from laion_clap.clap_module.htsat import HTSAT_Swin_Transformer
    from transformers import RobertaConfig, RobertaModel

    variant = variant_of(config)
    model = build_model(variant, seed=seed)
    a, t = config.audio_config, config.text_config
    model.audio_branch.config.mel_bins = a.num_mel_bins  # the same object as model.audio_cfg (the mel front end)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        branch = HTSAT_Swin_Transformer(
            spec_size=a.spec_size, patch_size=a.patch_size, patch_stride=tuple(a.patch_stride), in_chans=1,
            num_classes=a.num_classes, embed_dim=a.patch_embeds_hidden_size, depths=list(a.depths),
            num_heads=list(a.num_attention_heads), window_size=a.window_size, mlp_ratio=a.mlp_ratio,
            qkv_bias=a.qkv_bias, patch_norm=a.enable_patch_layer_norm, norm_layer=nn.LayerNorm,
            config=model.audio_branch.config, enable_fusion=False, fusion_type="None",
        )
        for layer in branch.layers:  # ClapModel's block norms use layer_norm_eps; the other norms keep 1e-5
            for blk in layer.blocks:
                blk.norm1.eps = blk.norm2.eps = a.layer_norm_eps
        text = RobertaModel(RobertaConfig(
            vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads, intermediate_size=t.intermediate_size,
            hidden_act=t.hidden_act, max_position_embeddings=t.max_position_embeddings,
            type_vocab_size=t.type_vocab_size, layer_norm_eps=t.layer_norm_eps, pad_token_id=t.pad_token_id,
            bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
        ))

        def projection(width, dim):
            return nn.Sequential(nn.Linear(width, dim), nn.ReLU(), nn.Linear(dim, dim))

        model.audio_branch = branch
        model.text_branch = text
        model.audio_projection = projection(a.hidden_size, a.projection_dim)
        model.text_projection = projection(t.hidden_size, t.projection_dim)
    model.eval()
    model.requires_grad_(False)
    model.variant = variant
    return model


def load(folder: str | os.PathLike, variant: str | None = None, seed: int = 0):
    """Build LAION's CLAP from the folder's config.json and load its ClapModel weights."""
    folder = Path(folder)
    config = read_config(folder)
    found = variant_of(config, folder / CONFIG)
    if variant is not None and variant != found:
        raise CheckpointError(f"{folder}: holds HTSAT-{found} weights but HTSAT-{variant} was asked for")
    path = weights_file(folder)
    state = to_laion(read_state(folder), path)
    model = build(config, seed=seed)
    check_state_keys(state, model.state_dict(), path, f"the ClapModel in {CONFIG}", optional=NOT_IN_CLAPMODEL)
    model.load_state_dict(state, strict=False)
    model.eval()
    model.weights = "pretrained"
    return model


def tokenizer_dir(folder: str | os.PathLike) -> Path | None:
    """The folder itself when it holds its own roberta tokenizer files, else None."""
    folder = Path(folder)
    return folder if all((folder / f).is_file() for f in TOKENIZER_FILES) else None


# --------------------------------------------------------------------------- (fetching ClapModel folders is in data/fetch.py)

FOLDER = "checkpoint"  # data/models/checkpoint/ holds a fetched ClapModel folder
HUB_PREFIX = "hf:"  # download.HF_PREFIX
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")




def hub_url() -> str:
    """The hub's address (HF_ENDPOINT, as huggingface_hub reads it, else huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")








def identity_file(checkpoint) -> Path:
    """The file whose sha256 identifies a checkpoint: the weights file of a ClapModel folder, else itself."""
    return weights_file(checkpoint) if is_folder(checkpoint) else Path(checkpoint)
