"""Zero-shot classification from the pooled 768-d embedding, with the frozen CLAP head.

The head is the family's audio projection, split after its first (linear) layer: LAION's
(`laion`: Linear, ReLU, Linear) or MS-CLAP's (`msclap`: Linear, GELU, Linear, plus the first,
LayerNorm).

The text side (class vectors, temperature) and the frozen audio projection are computed
once per dataset and cached in `data/text/<dataset>.npz`, so that every later stage —
ablation, ResiDual's direct mode, the baselines — runs without building the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.io import atomic_path

# The arrays of each kind of frozen audio projection (w1, b1: its first, linear layer).
PROJECTION_KEYS = {"laion": ("w1", "b1", "w2", "b2"), "msclap": ("w1", "b1", "w2", "ln_w", "ln_b", "ln_eps")}


class TextCacheError(ValueError):
    """The cached text side is missing or does not match the extraction store."""


@dataclass
class TextSide:
    """Class vectors, temperature and the frozen audio projection of one model."""

    classes: list[str]
    class_embeddings: np.ndarray  # [C, joint], rows L2-normalised (LAION 512, MS-CLAP 1024)
    logit_scale: float
    projection: dict  # kind ('laion' | 'msclap') and its arrays, PROJECTION_KEYS[kind]
    weights: str  # 'pretrained' or 'random'
    templates: list[str]
    checkpoint_sha256: str = ""


def build_text_side(model, tok, classes, templates=None, checkpoint_sha256: str = "") -> TextSide:
    """Embed every class once (templates averaged after normalisation) and copy the projection
    (`templates` None: the family's own prompt, LAION's "This is a sound of {label}", MS-CLAP's
    "this is a sound of {label}")."""
    from ..models.checkpoints import class_embeddings, default_prompt, logit_scale, projection_weights

    if templates is None:
        templates = [default_prompt(getattr(model, "family", "laion"))]
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for t in templates:
        if "{label}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{label}}' placeholder")
    emb = class_embeddings(model, tok, list(classes), list(templates))
    return TextSide(
        classes=list(classes),
        class_embeddings=emb.detach().cpu().numpy().astype(np.float32),
        logit_scale=logit_scale(model),
        projection=projection_weights(model),
        weights=getattr(model, "weights", "random"),
        templates=list(templates),
        checkpoint_sha256=checkpoint_sha256,
    )


def save_text_side(path: str | Path, text: TextSide) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                classes=np.array(text.classes),
                class_embeddings=text.class_embeddings,
                logit_scale=np.float64(text.logit_scale),
                weights=np.array(text.weights),
                templates=np.array(text.templates),
                checkpoint_sha256=np.array(text.checkpoint_sha256),
                projection_kind=np.array(text.projection["kind"]),
                **{f"projection_{k}": np.asarray(text.projection[k]) for k in PROJECTION_KEYS[text.projection["kind"]]},
            )


def load_text_side(path: str | Path, classes=None) -> TextSide:
    """The cached text side, checked: readable, no NaN or inf, one class vector per class, and (when
    `classes` is given) the classes of the store it is used with."""
    from ..data.stores import check_finite, read_npz, require

    path = Path(path)
    hint = "rerun the 'text' stage"
    base = ("classes", "class_embeddings", "logit_scale", "weights", "templates", "checkpoint_sha256", "projection_kind")
    z = read_npz(path, TextCacheError, hint, base)
    kind = str(z["projection_kind"])
    if kind not in PROJECTION_KEYS:
        raise TextCacheError(f"{path}: projection_kind {kind!r} is none of {', '.join(PROJECTION_KEYS)}; {hint}")
    projection = tuple(f"projection_{k}" for k in PROJECTION_KEYS[kind])
    require(path, z, TextCacheError, hint, projection)
    check_finite(path, z, TextCacheError, hint, ("class_embeddings", "logit_scale") + projection)
    if z["class_embeddings"].ndim != 2 or len(z["class_embeddings"]) != len(z["classes"]):
        raise TextCacheError(f"{path}: 'class_embeddings' has shape {z['class_embeddings'].shape} for "
                             f"{len(z['classes'])} classes; {hint}")
    arrays = {k: z[f"projection_{k}"].astype(np.float32) for k in PROJECTION_KEYS[kind]}
    if "ln_eps" in arrays:
        arrays["ln_eps"] = float(arrays["ln_eps"])
    text = TextSide(
        classes=[str(c) for c in z["classes"]],
        class_embeddings=z["class_embeddings"].astype(np.float32),
        logit_scale=float(z["logit_scale"]),
        projection={"kind": kind, **arrays},
        weights=str(z["weights"]),
        templates=[str(t) for t in z["templates"]],
        checkpoint_sha256=str(z["checkpoint_sha256"]),
    )
    if classes is not None and list(classes) != text.classes:
        raise TextCacheError(f"{path}: its classes differ from the extraction store's; rerun the 'text' stage")
    return text


class FrozenHead(nn.Module):
    """Frozen CLAP head split at the first linear layer.

    `pre(embedding)` is the first linear layer; `output(pre)` finishes the family's projection
    (LAION: ReLU, second linear; MS-CLAP: GELU, second linear, plus `pre`, LayerNorm), `audio_embed`
    normalises it and `forward(pre)` scores it against the class vectors. Splitting here lets
    ResiDual add its correction after the first layer: (e + c)W₁ᵀ = eW₁ᵀ + cW₁ᵀ.
    """

    def __init__(self, text: TextSide):
        super().__init__()
        p = text.projection
        self.kind = p["kind"]
        for k in PROJECTION_KEYS[self.kind]:
            if k != "ln_eps":
                self.register_buffer(k, torch.as_tensor(np.asarray(p[k], dtype=np.float32)))
        self.ln_eps = float(p.get("ln_eps", 0.0))
        self.register_buffer("classes", torch.from_numpy(text.class_embeddings))
        self.scale = float(text.logit_scale)

    def pre(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(embedding, self.w1, self.b1)

    def output(self, pre: torch.Tensor) -> torch.Tensor:
        """The projection's output before normalisation, from its first layer's."""
        if self.kind == "msclap":
            x = pre + F.linear(F.gelu(pre), self.w2)
            return F.layer_norm(x, x.shape[-1:], self.ln_w, self.ln_b, self.ln_eps)
        return F.linear(F.relu(pre), self.w2, self.b2)

    def audio_embed(self, pre: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output(pre), dim=-1)

    def logits_from_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return self.scale * audio @ self.classes.T

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return self.logits_from_audio(self.audio_embed(pre))


@torch.no_grad()
def zeroshot_logits(embedding, text: TextSide) -> np.ndarray:
    """Zero-shot logits of pooled 768-d embeddings: scale · normalise(proj(e)) · classesᵀ."""
    head = FrozenHead(text)
    e = torch.as_tensor(np.asarray(embedding, dtype=np.float32))
    return head(head.pre(e)).numpy()


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per clip: is the true class among the k highest logits (k capped at the class count)."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(1)
