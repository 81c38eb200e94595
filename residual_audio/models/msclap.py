"""MS-CLAP 2023 (Microsoft's CLAP, msclap's `CLAP_weights_2023.pth`), built and loaded offline.

The same 184-head HTSAT-tiny as LAION's (12 Swin blocks of `WindowAttention`, the same module
and parameter names), a GPT-2 text encoder and, on both sides, msclap's `Projection`
(Linear → GELU → Linear, plus the first Linear, then LayerNorm) into a 1024-d joint space.

The audio tower is LAION's own HTS-AT module (`clap_module.htsat`): msclap's `models/htsat.py`
is the same code with the fusion branches taken out, so the hooks, the exact decomposition and
inject mode run unchanged. The GPT-2 is built from GPT-2's published config (never
`from_pretrained`), and the tokenizer from explicit `vocab.json` + `merges.txt` files.

What msclap's code computes, which is not what its `config_2023.yml` says:
- the audio is resampled to 44.1 kHz and cut to 7 s (308,700 samples); a shorter clip is
  repeated and cut, a longer one cropped (msclap: at random; here at `preprocess.crop`);
- but `HTSATWrapper` builds its HTSAT from `msclap/models/config.py`, so the log-mel filter bank
  is made for **32 kHz, 50–14000 Hz** (FFT 1024, hop 320, 64 mels) and applied to 44.1 kHz audio.
  The YAML's "fmin 50, fmax 8000" is read by nothing in the 2023 model;
- there is no int16 round trip (LAION's API has one);
- msclap flattens a stereo file with `reshape(-1)`, concatenating the channels; here every
  clip is mixed down to mono first, as for LAION.

Text, as msclap's `CLAPWrapper.preprocess_text` and `TextEncoder` do it: " <|endoftext|>"
appended to every text, padded with "!" (id 0) to 77 tokens, GPT-2 run with the attention
mask, the hidden state taken at index `(input_ids != 0).sum() - 1` (msclap's "last token"
pooling, chosen because the text model's name contains "gpt"), then the caption projection.
msclap does not truncate (a text longer than 77 tokens fails to batch there); here it is cut
at 77 tokens.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .laion import (
    CheckpointError,
    MelFrontEnd,
    TokenizerError,
    check_finite_weights,
    check_state_keys,
    import_laion_clap,
    read_bpe_files,
    safe_load,
)

FAMILY = "msclap"
OFFICIAL_FILE = "CLAP_weights_2023.pth"
HUB_BASE_URL = "https://huggingface.co/microsoft/msclap/resolve/main/"
OFFICIAL_CHECKPOINTS = {OFFICIAL_FILE: HUB_BASE_URL + OFFICIAL_FILE}
# msclap's other files: refused, each with the reason.
REFUSED = {
    "CLAP_weights_2022.pth": "MS-CLAP 2022 has a CNN14 audio encoder (and a BERT text encoder): it has no attention "
                             "heads to study or reweight; use CLAP_weights_2023.pth",
    "clapcap_weights_2023.pth": "clapcap is MS-CLAP's captioning model (a CLAP plus a GPT-2 decoder), not a CLAP "
                                "checkpoint; use CLAP_weights_2023.pth",
}
TOKENIZER_BASE_URL = "https://huggingface.co/gpt2/resolve/main/"  # the hub's `gpt2` vocab.json + merges.txt

# The log-mel front end as msclap's code computes it (see the module docstring).
AUDIO_CFG = dict(
    sample_rate=32000,  # the filter bank's rate (msclap/models/config.py), not the audio's
    window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000,
    audio_rate=44100, clip_samples=7 * 44100, fill="repeat", quantize=False, family=FAMILY,
)
# HTSAT_Swin_Transformer's arguments in msclap's HTSATWrapper (its defaults: HTSAT-tiny, 527 classes).
HTSAT = dict(spec_size=256, patch_size=4, patch_stride=(4, 4), in_chans=1, num_classes=527, embed_dim=96,
             depths=[2, 2, 6, 2], num_heads=[4, 8, 16, 32], window_size=8)
# GPT-2 (124M) as the hub's `gpt2` config.json gives it.
GPT2 = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, activation_function="gelu_new",
            layer_norm_epsilon=1e-5, bos_token_id=50256, eos_token_id=50256)
AUDIO_WIDTH, TEXT_WIDTH, D_PROJ = 768, 768, 1024
CONTEXT_LENGTH = 77
EOT = " <|endoftext|>"
PAD_TOKEN, PAD_ID = "!", 0
VOCAB_SIZE = 50257
EOT_ID = 50256
PROBE = ("Hello world", [15496, 995])
PROMPT = "this is a sound of {label}"  # msclap's zero-shot prompt (its README's 'this is a sound of ' + label)
PROMPT_START = 0  # GPT-2 puts no token before a text

PREFIXES = {  # official key prefix -> ours (LAION's module names)
    "audio_encoder.base.htsat.": "audio_branch.",
    "audio_encoder.projection.": "audio_projection.",
    "caption_encoder.base.": "text_branch.",
    "caption_encoder.projection.": "text_projection.",
}
# Keys a real file may hold that the model lacks: GPT-2's causal-mask buffers, which transformers
# 4 saved with the weights and transformers 5 no longer registers. msclap loads with strict=False;
# these are the only keys let through, and no key of the model may be missing.
EXTRA_KEYS = re.compile(r"caption_encoder\.base\.h\.\d+\.attn\.(bias|masked_bias)")


class Projection(nn.Module):
    """msclap's `Projection`: LayerNorm(l1(x) + l2(GELU(l1(x)))), no biases; its dropout (p 0.5) is the
    identity in eval() and is left out."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)

    @property
    def out_features(self) -> int:
        return self.linear2.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed1 = self.linear1(x)
        return self.layer_norm(embed1 + self.linear2(F.gelu(embed1)))


class MSClap(nn.Module):
    """MS-CLAP 2023 in LAION's module names: `audio_branch` (LAION's HTS-AT module), `audio_projection`,
    `text_branch` (GPT-2), `text_projection`, `logit_scale`."""

    family = FAMILY

    def __init__(self):
        super().__init__()
        import_laion_clap()
        from clap_module.htsat import HTSAT_Swin_Transformer
        from transformers import GPT2Config, GPT2Model

        self.audio_cfg = SimpleNamespace(**AUDIO_CFG)
        self.audio_branch = HTSAT_Swin_Transformer(**HTSAT, config=self.audio_cfg, enable_fusion=False,
                                                   fusion_type="None")
        self.audio_projection = Projection(AUDIO_WIDTH, D_PROJ)
        self.text_branch = GPT2Model(GPT2Config(**GPT2))
        self.text_projection = Projection(TEXT_WIDTH, D_PROJ)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.variant = "tiny"


def build_model(seed: int = 0) -> MSClap:
    """MS-CLAP 2023 with seeded random weights, frozen, in eval(). As for LAION's, every bias, norm
    weight and BatchNorm statistic is perturbed, so tests exercise every term."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MSClap()
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "extractor" in name:
                    continue
                if name.endswith("bias") or p.ndim == 1:
                    p.add_(0.02 * torch.randn(p.shape, generator=gen))
            bn = model.audio_branch.bn0
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 2 - 10)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) * 4 + 2)
    model.eval()
    model.requires_grad_(False)
    model.weights = "random"
    return model


# --------------------------------------------------------------------------- the official file


def claims(raw) -> bool:
    """Whether a loaded torch file is in msclap's format: {'model': state_dict} of its CLAP."""
    state = raw.get("model") if isinstance(raw, dict) else None
    return isinstance(state, dict) and any(isinstance(k, str) and "audio_encoder." in k for k in state)


def state_of(raw, path) -> dict:
    """The state dict of an msclap file in our module names; refuses MS-CLAP 2022, clapcap and any key
    that is neither the model's nor one of `EXTRA_KEYS`."""
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in raw["model"].items()}
    if any(k.startswith("clap.") for k in state):
        raise CheckpointError(f"{path}: {REFUSED['clapcap_weights_2023.pth']}")
    if any(k.startswith("audio_encoder.base.conv_block") for k in state):
        raise CheckpointError(f"{path}: {REFUSED['CLAP_weights_2022.pth']}")
    if not any(k.startswith("audio_encoder.base.htsat.") for k in state):
        raise CheckpointError(f"{path}: no audio_encoder.base.htsat weights; not an MS-CLAP 2023 checkpoint")
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: state_dict entry '{bad[0]}' is not a tensor")
    out = {}
    for key, value in state.items():
        if EXTRA_KEYS.fullmatch(key):
            continue
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None and key != "logit_scale":
            raise CheckpointError(f"{path}: unexpected key {key!r}; not an MS-CLAP 2023 checkpoint")
        out[key if prefix is None else PREFIXES[prefix] + key[len(prefix):]] = value
    return out


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """The state dict (our names) of an official `CLAP_weights_2023.pth`, read with `safe_load`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    raw = safe_load(path, mmap=mmap)
    if not claims(raw):
        raise CheckpointError(f"{path}: not an msclap checkpoint ({{'model': state_dict}} with audio_encoder.* keys)")
    return state_of(raw, path)


def load_state(state: dict, path, seed: int = 0) -> MSClap:
    """MS-CLAP 2023 holding `state` (from `state_of`): every key of the model present, every shape equal."""
    check_finite_weights(state, path)
    model = build_model(seed)
    check_state_keys(state, model.state_dict(), path, "MS-CLAP 2023", official_name)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.weights = "pretrained"
    return model


def official_name(key: str) -> str:
    """Our key's name in msclap's file."""
    for theirs, ours in PREFIXES.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def save_checkpoint(model: MSClap, path: str | os.PathLike, gpt2_buffers: bool = False) -> None:
    """Write `model` exactly in msclap's format, `{'model': state_dict}` with its key names (for tests
    and offline runs). `gpt2_buffers`: add the causal-mask buffers transformers 4 saved."""
    from ..core.io import atomic_path

    state = {official_name(k): v.clone() for k, v in model.state_dict().items()}
    if gpt2_buffers:
        n = GPT2["n_positions"]
        for i in range(GPT2["n_layer"]):
            state[f"caption_encoder.base.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
            state[f"caption_encoder.base.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    with atomic_path(path) as tmp:
        torch.save({"model": state}, tmp)


def front_end(state: dict | None = None, source="MS-CLAP 2023") -> MelFrontEnd:
    """msclap's log-mel front end; with a state dict, its stored STFT/mel weights."""
    return MelFrontEnd(AUDIO_CFG) if state is None else MelFrontEnd.from_state(state, AUDIO_CFG, source)


# --------------------------------------------------------------------------- text side


def load_tokenizer(directory: str | os.PathLike):
    """GPT-2's tokenizer from explicit `vocab.json` + `merges.txt`, with msclap's pad token '!' (id 0), checked."""
    from transformers import GPT2Tokenizer

    vocab, merges = read_bpe_files(directory)
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    check_tokenizer(tok, directory)
    return tok


def check_tokenizer(tok, source="tokenizer") -> None:
    if len(tok) != VOCAB_SIZE:
        raise TokenizerError(f"{source}: tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE} (GPT-2)")
    if tok.pad_token_id != PAD_ID or tok.convert_tokens_to_ids("<|endoftext|>") != EOT_ID:
        raise TokenizerError(f"{source}: '!' has id {tok.pad_token_id} and <|endoftext|> "
                             f"{tok.convert_tokens_to_ids('<|endoftext|>')}, expected {PAD_ID} and {EOT_ID} (GPT-2)")
    text, ids = PROBE
    got = tok(text)["input_ids"]
    if got != ids:
        raise TokenizerError(f"{source}: {text!r} tokenizes to {got}, expected GPT-2's {ids}")


def tokenize(tok, texts: list[str]) -> dict:
    """msclap's text input: ' <|endoftext|>' appended, padded with '!' to 77 tokens (cut there), as tensors."""
    out = tok([t + EOT for t in texts], padding="max_length", truncation=True, max_length=CONTEXT_LENGTH,
              return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def content_ids(tok, text: str) -> list[int]:
    """The token ids of `text` (GPT-2 adds no special tokens)."""
    return tok(text)["input_ids"] if text else []


def word_embeddings(model):
    """GPT-2's token embedding table."""
    return model.text_branch.wte


def pool_index(input_ids: torch.Tensor) -> torch.Tensor:
    """msclap's pooling position: the count of non-'!' tokens minus one (its 'last token')."""
    return torch.ne(input_ids, PAD_ID).sum(-1) - 1


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, inputs_embeds=None) -> torch.Tensor:
    """GPT-2's hidden state at msclap's pooling position, [B, 768] (`inputs_embeds` replace the token
    embeddings, as prompt learning needs)."""
    if inputs_embeds is None:
        hidden = model.text_branch(input_ids=input_ids, attention_mask=attention_mask)[0]
    else:
        hidden = model.text_branch(inputs_embeds=inputs_embeds, attention_mask=attention_mask)[0]
    return hidden[torch.arange(len(hidden), device=hidden.device), pool_index(input_ids).to(hidden.device)]


def logit_scale(model) -> float:
    """msclap's temperature, `logit_scale.exp()` (its `compute_similarity`)."""
    return float(model.logit_scale.exp())


def projection_weights(model) -> dict:
    """The frozen audio projection, for the text side: kind 'msclap' (see evaluation.zeroshot.FrozenHead)."""
    p = model.audio_projection
    w1 = p.linear1.weight.detach().cpu().float().numpy()
    return {"kind": FAMILY, "w1": w1, "b1": w1[:, 0] * 0, "w2": p.linear2.weight.detach().cpu().float().numpy(),
            "ln_w": p.layer_norm.weight.detach().cpu().float().numpy(),
            "ln_b": p.layer_norm.bias.detach().cpu().float().numpy(), "ln_eps": float(p.layer_norm.eps)}
