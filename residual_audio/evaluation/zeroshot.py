"""Zero-shot classification from the pooled 768-d embedding, with the frozen CLAP head.

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

DEFAULT_TEMPLATES = ("This is a sound of {label}",)  # LAION-CLAP's own ESC-50 zero-shot prompt


class TextCacheError(ValueError):
    """The cached text side is missing or does not match the extraction store."""


@dataclass
class TextSide:
    """Class vectors, temperature and the frozen audio projection of one model."""

    classes: list[str]
    class_embeddings: np.ndarray  # [C, 512], rows L2-normalised
    logit_scale: float
    projection: dict  # w1 [512,768], b1 [512], w2 [512,512], b2 [512]
    weights: str  # 'pretrained' or 'random'
    templates: list[str]
    checkpoint_sha256: str = ""


def build_text_side(model, tok, classes, templates=DEFAULT_TEMPLATES, checkpoint_sha256: str = "") -> TextSide:
    """Embed every class once (templates averaged after normalisation) and copy the projection."""
    from ..models.checkpoints import class_embeddings, logit_scale

    if not templates:
        raise ValueError("at least one prompt template is needed")
    for t in templates:
        if "{label}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{label}}' placeholder")
    emb = class_embeddings(model, tok, list(classes), list(templates))
    proj = model.audio_projection
    return TextSide(
        classes=list(classes),
        class_embeddings=emb.detach().cpu().numpy().astype(np.float32),
        logit_scale=logit_scale(model),
        projection=projection_weights(proj),
        weights=getattr(model, "weights", "random"),
        templates=list(templates),
        checkpoint_sha256=checkpoint_sha256,
    )


def projection_weights(proj: nn.Module) -> dict:
    """The weights of LAION's audio projection (Linear 768→512, ReLU, Linear 512→512)."""
    return {
        "w1": proj[0].weight.detach().cpu().numpy().astype(np.float32),
        "b1": proj[0].bias.detach().cpu().numpy().astype(np.float32),
        "w2": proj[2].weight.detach().cpu().numpy().astype(np.float32),
        "b2": proj[2].bias.detach().cpu().numpy().astype(np.float32),
    }


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
                **{f"projection_{k}": v for k, v in text.projection.items()},
            )


def load_text_side(path: str | Path, classes=None) -> TextSide:
    """The cached text side, checked: readable, no NaN or inf, one class vector per class, and (when
    `classes` is given) the classes of the store it is used with."""
    from ..data.stores import check_finite, read_npz

    path = Path(path)
    hint = "rerun the 'text' stage"
    projection = tuple(f"projection_{k}" for k in ("w1", "b1", "w2", "b2"))
    z = read_npz(path, TextCacheError, hint,
                 ("classes", "class_embeddings", "logit_scale", "weights", "templates", "checkpoint_sha256") + projection)
    check_finite(path, z, TextCacheError, hint, ("class_embeddings", "logit_scale") + projection)
    if z["class_embeddings"].ndim != 2 or len(z["class_embeddings"]) != len(z["classes"]):
        raise TextCacheError(f"{path}: 'class_embeddings' has shape {z['class_embeddings'].shape} for "
                             f"{len(z['classes'])} classes; {hint}")
    text = TextSide(
        classes=[str(c) for c in z["classes"]],
        class_embeddings=z["class_embeddings"].astype(np.float32),
        logit_scale=float(z["logit_scale"]),
        projection={k: z[f"projection_{k}"].astype(np.float32) for k in ("w1", "b1", "w2", "b2")},
        weights=str(z["weights"]),
        templates=[str(t) for t in z["templates"]],
        checkpoint_sha256=str(z["checkpoint_sha256"]),
    )
    if classes is not None and list(classes) != text.classes:
        raise TextCacheError(f"{path}: its classes differ from the extraction store's; rerun the 'text' stage")
    return text


class FrozenHead(nn.Module):
    """Frozen CLAP head split at the first linear layer.

    `pre(embedding)` is the first linear layer; `forward(pre)` finishes the projection
    (ReLU, second linear), normalises and scores against the class vectors. Splitting
    here lets ResiDual add its correction after the first layer: (e + c)W₁ᵀ = eW₁ᵀ + cW₁ᵀ.
    """

    def __init__(self, text: TextSide):
        super().__init__()
        p = text.projection
        self.register_buffer("w1", torch.from_numpy(p["w1"]))
        self.register_buffer("b1", torch.from_numpy(p["b1"]))
        self.register_buffer("w2", torch.from_numpy(p["w2"]))
        self.register_buffer("b2", torch.from_numpy(p["b2"]))
        self.register_buffer("classes", torch.from_numpy(text.class_embeddings))
        self.scale = float(text.logit_scale)

    def pre(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(embedding, self.w1, self.b1)

    def audio_embed(self, pre: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.linear(F.relu(pre), self.w2, self.b2), dim=-1)

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
