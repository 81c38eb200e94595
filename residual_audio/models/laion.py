"""LAION-CLAP built and loaded with no model-hub access at any point.

`laion_clap` reaches for the hub at import time (three tokenizers) and when a CLAP
model is built (``RobertaModel.from_pretrained('roberta-base')``). Here the hub is
switched off before the import, the text tower is built from an explicit roberta-base
config, and the tokenizer comes from explicit ``vocab.json`` + ``merges.txt`` files.
The model object is LAION's own ``CLAP`` class, so its own forward can be used as the
reference our hooked forward is checked against.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Must happen before transformers / huggingface_hub / laion_clap are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from ..core.logs import quiet_libraries  # noqa: E402

quiet_libraries()  # laion_clap's HTS-AT calls torch.meshgrid without `indexing` when it is built

ROBERTA_BASE = dict(
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
)
VOCAB_SIZE = 50265
SPECIAL_TOKENS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 50264}
# roberta-base ids of a probe sentence: catches a vocabulary without its merges.
PROBE = ("This is a sound of dog.", [0, 713, 16, 10, 2369, 9, 2335, 4, 2])
CONTEXT_LENGTH = 77
PROMPT = "This is a sound of {label}"  # LAION-CLAP's ESC-50 zero-shot prompt (no period)
FAMILY = "laion"
TOKENIZER_BASE_URL = "https://huggingface.co/roberta-base/resolve/main/"  # roberta-base vocab.json + merges.txt
PROMPT_START = 1  # a prompt's first word follows <s>

# HTS-AT variants: audio width after the last stage tells them apart in a checkpoint.
VARIANTS = {
    "tiny": dict(amodel="HTSAT-tiny", embed_dim=768, depths=(2, 2, 6, 2), heads=(4, 8, 16, 32), width=96),
    "base": dict(amodel="HTSAT-base", embed_dim=1024, depths=(2, 2, 12, 2), heads=(4, 8, 16, 32), width=128),
}
POSITION_IDS_KEY = "text_branch.embeddings.position_ids"
FUSION_MARKERS = ("fusion_model", "mel_conv1d", "mel_conv2d")


class CheckpointError(ValueError):
    """The checkpoint file is missing, not a LAION-CLAP checkpoint, or not supported."""


class TokenizerError(ValueError):
    """The tokenizer files are missing or do not make the roberta-base tokenizer."""


def import_laion_clap():
    """Import laion_clap with the hub switched off (it calls the hub at import time)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import huggingface_hub.constants

    # the hub library reads the variable once, at its own import: force it if that came first
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    # isort: off  (laion_clap first: it puts its own dir, which holds clap_module, on sys.path)
    import laion_clap  # noqa: F401
    import clap_module.factory as factory
    import clap_module.model as clap_model

    # isort: on

    return factory, clap_model


@contextlib.contextmanager
def _roberta_from_config(clap_model):
    """Make laion_clap's `RobertaModel.from_pretrained('roberta-base')` build from a config."""
    from transformers import RobertaConfig, RobertaModel

    original = clap_model.RobertaModel

    class _Offline:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            if name != "roberta-base":
                raise CheckpointError(f"text branch '{name}' is not supported (only roberta-base)")
            return RobertaModel(RobertaConfig(**ROBERTA_BASE))

    clap_model.RobertaModel = _Offline
    try:
        yield
    finally:
        clap_model.RobertaModel = original


def model_config(variant: str = "tiny") -> dict:
    """LAION's own model config for an HTS-AT variant (audio_cfg, text_cfg, embed_dim)."""
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown model variant '{variant}' (known: {', '.join(VARIANTS)})")
    factory, _ = import_laion_clap()
    cfg = copy.deepcopy(factory._MODEL_CONFIGS[VARIANTS[variant]["amodel"]])
    cfg["text_cfg"]["model_type"] = "roberta"
    cfg["enable_fusion"] = False
    cfg["fusion_type"] = "None"
    return cfg


def build_model(variant: str = "tiny", seed: int = 0):
    """LAION's `CLAP` (non-fusion, RoBERTa text tower) with seeded random weights, in eval mode.

    Beyond LAION's own initialisation, every bias, norm weight and BatchNorm statistic is
    perturbed, so that tests on random weights exercise every term (LAION initialises
    biases to zero and norms to identity, which would hide mistakes in their handling).
    """
    _, clap_model = import_laion_clap()
    cfg = model_config(variant)
    devnull = open(os.devnull, "w")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _roberta_from_config(clap_model), contextlib.redirect_stdout(devnull):
            model = clap_model.CLAP(**cfg)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.requires_grad or "extractor" in name:
                    continue
                if name.endswith("bias") or p.ndim == 1:
                    p.add_(0.02 * torch.randn(p.shape, generator=gen))
            bn = model.audio_branch.bn0
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 2 - 10)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) * 4 + 2)
    devnull.close()
    model.eval()
    model.requires_grad_(False)
    model.variant = variant
    model.weights = "random"
    return model


# Official LAION-CLAP files are training checkpoints: besides tensors they pickle numpy
# scalars (`epoch`, scores), so `torch.load(weights_only=True)` needs exactly these types
# allowed. Anything else (a function, a class with `__reduce__`) is refused, never run.
def _numpy_safe_globals() -> list:
    import numpy.core.multiarray as multiarray

    types = [multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by their class
    if dtypes is not None:
        types += [getattr(dtypes, n) for n in (
            "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType",
            "UInt32DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType",
        ) if hasattr(dtypes, n)]
    return types


def safe_load(path: str | os.PathLike, mmap: bool = False):
    """`torch.load` that never runs code from the file: tensors, containers and numpy scalars only.

    A file that needs anything else raises CheckpointError naming the file and the refused type.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
            detail = detail.group(1) if detail else str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail or exc.__class__.__name__})") from None
        raise CheckpointError(
            f"{path}: refused to load: the file needs '{found.group(1).rstrip('.')}', which is not a tensor, "
            "container or numpy scalar (loading it could run code from the file)"
        ) from None
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):  # legacy (non-zip) format: no memory map
            return safe_load(path, mmap=False)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}: {exc})") from None
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}: {exc})") from None


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """The model state dict of an official LAION-CLAP training checkpoint, cleaned for loading.

    Official files are training checkpoints (a dict with `state_dict`, `module.`-prefixed
    keys, optimizer state and numpy scalars); they are read with `safe_load`, so a file
    carrying anything that could run code is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return state_of(safe_load(path, mmap=mmap), path)


def state_of(raw, path) -> dict:
    """The cleaned LAION-CLAP state dict of a loaded checkpoint file `raw` (see read_checkpoint)."""
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: no state_dict found; not a LAION-CLAP checkpoint")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if "audio_projection.0.weight" not in state or not any(k.startswith("audio_branch.") for k in state):
        raise CheckpointError(f"{path}: no audio_branch/audio_projection weights; not a LAION-CLAP checkpoint")
    fusion = sorted({m for k in state for m in FUSION_MARKERS if m in k})
    if fusion:
        raise CheckpointError(
            f"{path}: this is a fusion checkpoint ({', '.join(fusion)} weights); "
            "only non-fusion checkpoints (630k-audioset-best.pt, 630k-best.pt, music_*) are supported"
        )
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: state_dict entry '{bad[0]}' is not a tensor")
    state.pop(POSITION_IDS_KEY, None)
    return state


def variant_of(state: dict, path: str | os.PathLike = "checkpoint") -> str:
    """Tell HTSAT-tiny from HTSAT-base by the audio projection's input width."""
    width = state["audio_projection.0.weight"].shape[1]
    for name, spec in VARIANTS.items():
        if spec["embed_dim"] == width:
            return name
    raise CheckpointError(f"{path}: audio_projection.0.weight has input width {width}; expected 768 (tiny) or 1024 (base)")


def check_state_keys(state: dict, own: dict, path, against: str, name=str, optional=None) -> None:
    """`state` holds every key of the model's state dict `own` (but those the regex `optional` matches) and
    no other, each with its shape; else one line naming the first key at fault as `name` spells it."""
    missing = sorted(k for k in own if k not in state and not (optional is not None and optional.search(k)))
    extra = sorted(k for k in state if k not in own)
    if missing or extra:
        what = f"missing {name(missing[0])!r}" if missing else f"unexpected {name(extra[0])!r}"
        raise CheckpointError(f"{path}: weights do not match {against} ({what}, {len(missing)} missing, "
                              f"{len(extra)} unexpected)")
    bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: {name(bad[0])} has shape {tuple(state[bad[0]].shape)}, expected "
                              f"{tuple(own[bad[0]].shape)} from {against}")


def check_finite_weights(state: dict, path) -> None:
    """Refuse a state dict with a NaN or inf in any floating tensor (every embedding would be NaN)."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: weight {key!r} holds NaN or inf")


def load_file(checkpoint: str | os.PathLike, variant: str | None = None, seed: int = 0, state: dict | None = None):
    """Build the model and load the weights of an official LAION-CLAP checkpoint file (`state`:
    its state dict, when already read).

    Loading is strict: every key of the model must come from the file and vice versa.
    (`checkpoints.load_model` takes any checkpoint: a LAION file, a ClapModel folder or 'random'.)
    """
    state = read_checkpoint(checkpoint) if state is None else state
    check_finite_weights(state, checkpoint)
    found = variant_of(state, checkpoint)
    if variant is not None and variant != found:
        raise CheckpointError(f"{checkpoint}: holds HTSAT-{found} weights but HTSAT-{variant} was asked for")
    model = build_model(found, seed=seed)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: weights do not match LAION-CLAP HTSAT-{found}: {exc}") from None
    model.eval()
    model.weights = "pretrained"
    return model


def save_checkpoint(model, path: str | os.PathLike, with_position_ids: bool = True, epoch: int = 45) -> None:
    """Write `model` exactly in the official training-checkpoint format (for tests and offline runs)."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    if with_position_ids:
        state[f"module.{POSITION_IDS_KEY}"] = torch.arange(ROBERTA_BASE["max_position_embeddings"]).unsqueeze(0)
    params = [p for p in model.parameters()][:2]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    checkpoint = {
        "epoch": np.int64(epoch),
        "name": f"{getattr(model, 'variant', 'tiny')}-random-weights",
        "state_dict": state,
        "optimizer": optimizer.state_dict(),
        "best_score": np.float64(0.0),
    }
    from ..core.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


# --------------------------------------------------------------------------- tokenizer


def read_bpe_files(directory: str | os.PathLike, error=None) -> tuple[dict, list]:
    """The vocabulary and merge rules of a byte-level BPE tokenizer, read from explicit `vocab.json` +
    `merges.txt` files (`error`: the exception type raised, TokenizerError by default).

    ``from_pretrained`` offline silently gives a 5-token tokenizer, and transformers 5 silently
    ignores ``vocab_file=``/``merges_file=``; the files are therefore read here and handed over as
    objects, and each family checks the tokenizer it builds from them."""
    error = error or TokenizerError
    directory = Path(directory)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    for p in (vocab_path, merges_path):
        if not p.is_file():
            raise error(f"{p}: tokenizer file not found")
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{vocab_path}: not valid JSON ({exc})") from None
    if not isinstance(vocab, dict):
        raise error(f"{vocab_path}: not a token-to-id mapping")
    merges = []
    for line in merges_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise error(f"{merges_path}: malformed merge rule {line!r}")
        merges.append(tuple(parts))
    return vocab, merges


def load_tokenizer(directory: str | os.PathLike):
    """The roberta-base BPE tokenizer from explicit `vocab.json` + `merges.txt` files, checked."""
    from transformers import RobertaTokenizer

    vocab, merges = read_bpe_files(directory)
    tok = RobertaTokenizer(vocab=vocab, merges=merges)
    check_tokenizer(tok, directory)
    return tok


def check_tokenizer(tok, source="tokenizer") -> None:
    if len(tok) != VOCAB_SIZE:
        raise TokenizerError(f"{source}: tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE} (roberta-base)")
    for token, idx in SPECIAL_TOKENS.items():
        got = tok.convert_tokens_to_ids(token)
        if got != idx:
            raise TokenizerError(f"{source}: special token {token} has id {got}, expected {idx}")
    text, ids = PROBE
    got = tok(text)["input_ids"]
    if got != ids:
        raise TokenizerError(f"{source}: {text!r} tokenizes to {got}, expected roberta-base's {ids}")


def tokenize(tok, texts: list[str]) -> dict:
    """LAION's text input: padded to 77 tokens, truncated, as tensors."""
    out = tok(list(texts), padding="max_length", truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def content_ids(tok, text: str) -> list[int]:
    """The token ids of `text` without the special tokens around it."""
    return tok(text)["input_ids"][1:-1] if text else []


def word_embeddings(model):
    """The text encoder's token embedding table."""
    return model.text_branch.embeddings.word_embeddings


def position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """RoBERTa's position ids from token ids (padding keeps the padding index), as `RobertaEmbeddings`
    computes them from `input_ids`; given explicitly, because from `inputs_embeds` alone it cannot tell
    padding apart."""
    pad = ROBERTA_BASE["pad_token_id"]
    mask = input_ids.ne(pad).long()
    return torch.cumsum(mask, dim=1) * mask + pad


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, inputs_embeds=None) -> torch.Tensor:
    """RoBERTa's pooled output, [B, 768] (`inputs_embeds` replace the token embeddings)."""
    if inputs_embeds is None:
        return model.text_branch(input_ids=input_ids, attention_mask=attention_mask)["pooler_output"]
    return model.text_branch(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                             position_ids=position_ids(input_ids).to(inputs_embeds.device))["pooler_output"]


def projection_weights(model) -> dict:
    """LAION's audio projection (Linear 768→512, ReLU, Linear 512→512), kind 'laion', for the text side."""
    return mlp_weights(model.audio_projection)


def mlp_weights(proj) -> dict:
    """The arrays of a Linear–ReLU–Linear projection (nn.Sequential), kind 'laion'."""
    return {"kind": FAMILY, **{k: t.detach().cpu().float().numpy() for k, t in (
        ("w1", proj[0].weight), ("b1", proj[0].bias), ("w2", proj[2].weight), ("b2", proj[2].bias))}}


def logit_scale(model) -> float:
    """The audio-side temperature, `logit_scale_a.exp()`."""
    return float(model.logit_scale_a.exp())


# --------------------------------------------------------------------------- audio path


class MelFrontEnd(torch.nn.Module):
    """The model's frozen STFT + log-mel extractor on its own, so preprocessing needs no full model.

    Built exactly as HTS-AT builds it; with a checkpoint, its stored extractor weights are
    loaded, so the cached log-mel is bit-for-bit what that model computes.
    """

    PREFIX = "audio_branch."

    def __init__(self, audio_cfg: dict):
        super().__init__()
        import_laion_clap()
        from torchlibrosa.stft import LogmelFilterBank, Spectrogram

        c = audio_cfg
        self.spectrogram_extractor = Spectrogram(
            n_fft=c["window_size"], hop_length=c["hop_size"], win_length=c["window_size"], window="hann",
            center=True, pad_mode="reflect", freeze_parameters=True,
        )
        self.logmel_extractor = LogmelFilterBank(
            sr=c["sample_rate"], n_fft=c["window_size"], n_mels=c["mel_bins"], fmin=c["fmin"], fmax=c["fmax"],
            ref=1.0, amin=1e-10, top_db=None, freeze_parameters=True,
        )
        self.audio_cfg = dict(audio_cfg)
        self.eval()

    @classmethod
    def from_file(cls, checkpoint: str | os.PathLike) -> "MelFrontEnd":
        """The front end held in an official LAION-CLAP checkpoint file (its frozen STFT/mel weights)."""
        state = read_checkpoint(checkpoint)
        return cls.from_state(state, model_config(variant_of(state, checkpoint))["audio_cfg"], checkpoint)

    @classmethod
    def from_state(cls, state: dict, audio_cfg: dict, source) -> "MelFrontEnd":
        """The front end of `audio_cfg` with the frozen STFT/mel weights of a state dict in LAION's names."""
        front = cls(audio_cfg)
        own = {k: state[cls.PREFIX + k] for k in front.state_dict() if cls.PREFIX + k in state}
        try:
            front.load_state_dict(own, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{source}: mel extractor weights do not match the audio settings: {exc}") from None
        return front

    # The waveform the front end expects. LAION's config has one rate for the audio and the mel bank;
    # a family whose bank was made for another rate (MS-CLAP) gives `audio_rate` apart.
    @property
    def audio_rate(self) -> int:
        """Sample rate (Hz) of the waveform fed to the front end."""
        return int(self.audio_cfg.get("audio_rate", self.audio_cfg["sample_rate"]))

    @property
    def clip_samples(self) -> int:
        """Samples of one model-ready clip."""
        return int(self.audio_cfg["clip_samples"])

    @property
    def fill(self) -> str:
        """How a shorter clip is made clip_samples long: 'repeatpad' (whole repeats, then zeros: LAION)
        or 'repeat' (repeated and cut: MS-CLAP)."""
        return str(self.audio_cfg.get("fill", "repeatpad"))

    @property
    def family(self) -> str:
        """The model family whose front end this is."""
        return str(self.audio_cfg.get("family", FAMILY))

    @property
    def quantize(self) -> bool:
        """Whether the waveform goes through LAION's int16 round trip first."""
        return bool(self.audio_cfg.get("quantize", True))

    def settings(self) -> dict:
        """The audio settings a mel store records."""
        keys = ("sample_rate", "window_size", "hop_size", "mel_bins", "fmin", "fmax", "clip_samples")
        return {**{k: self.audio_cfg[k] for k in keys}, "audio_rate": self.audio_rate, "fill": self.fill,
                "quantize": self.quantize}

    @classmethod
    def of(cls, model) -> "MelFrontEnd":
        front = cls(model.audio_cfg.__dict__)
        front.spectrogram_extractor.load_state_dict(model.audio_branch.spectrogram_extractor.state_dict())
        front.logmel_extractor.load_state_dict(model.audio_branch.logmel_extractor.state_dict())
        return front

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """[B, clip_samples] waveform -> [B, frames, mels] log-mel (LAION: [B, 480000] -> [B, 1001, 64])."""
        x = self.spectrogram_extractor(waveform)
        return self.logmel_extractor(x)[:, 0]

    def fingerprint(self) -> str:
        """sha256 of the extractor weights: ties a mel store to the model that must read it."""
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()


@torch.no_grad()
def log_mel(model, waveform: torch.Tensor) -> torch.Tensor:
    """Log-mel from the model's own frozen extractor: [B, 480000] -> [B, 1001, 64]."""
    branch = model.audio_branch
    x = branch.spectrogram_extractor(waveform)  # [B, 1, frames, freq]
    x = branch.logmel_extractor(x)  # [B, 1, frames, mels]
    return x[:, 0]


def audio_embedding_from_mel(model, mel: torch.Tensor) -> dict:
    """LAION's audio path from a cached log-mel, in eval mode (no SpecAugment, frozen BN).

    Returns the 768-d pooled final-norm `embedding` and the normalised 512-d `audio_embed`.
    """
    if model.training:
        raise RuntimeError("the frozen model must stay in eval() mode")
    branch = model.audio_branch
    x = mel[:, None]  # [B, 1, frames, mels]
    x = branch.bn0(x.transpose(1, 3)).transpose(1, 3)
    x = branch.reshape_wav2img(x)
    embedding = branch.forward_features(x)["embedding"]
    return {"embedding": embedding, "audio_embed": F.normalize(model.audio_projection(embedding), dim=-1)}


def mel_fingerprint(model) -> str:
    """sha256 of the model's frozen STFT and mel filterbank weights (see MelFrontEnd.fingerprint)."""
    return MelFrontEnd.of(model).fingerprint()


@dataclass(frozen=True)
class Architecture:
    """Shape facts of an HTS-AT audio branch, read off the model itself."""

    depths: tuple
    heads: tuple
    widths: tuple
    head_dim: int

    @property
    def n_heads(self) -> int:
        return sum(d * h for d, h in zip(self.depths, self.heads))

    @classmethod
    def of(cls, model) -> "Architecture":
        layers = model.audio_branch.layers
        depths = tuple(len(layer.blocks) for layer in layers)
        heads = tuple(layer.blocks[0].num_heads for layer in layers)
        widths = tuple(layer.dim for layer in layers)
        return cls(depths, heads, widths, widths[0] // heads[0])


def checkpoint_from(models_dir: str | os.PathLike) -> str | Path:
    """The checkpoint the model stage provided: its file or ClapModel folder, or 'random'."""
    models_dir = Path(models_dir)
    manifest = models_dir / "manifest.json"
    if not manifest.is_file():
        raise CheckpointError(f"{manifest}: not found; run the model stage first")
    info = json.loads(manifest.read_text())
    if info.get("weights") == "random":
        return "random"
    if (models_dir / "checkpoint" / "config.json").is_file():  # a transformers ClapModel folder
        return models_dir / "checkpoint"
    path = models_dir / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found (manifest says pretrained weights)")
    return path
