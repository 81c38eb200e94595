"""ResiDual inside HTS-AT's forward pass (`residual.mode: inject`).

Every attention head of the stages in `inject_layers` is reweighted on its output before
the output projection (`layers.{s}.blocks.{b}.attn.hook_z`, [B, T, H, 24]), token by token:

    z' = z + Φ_hᵀ diag(λ_h − 1) Φ_h (z − μ_h)        (`beyond: keep`)
    z' = μ_h + Φ_hᵀ diag(λ_h) Φ_h (z − μ_h)           (`beyond: drop`)

with μ_h, Φ_h the mean and kept PCA components of head h's token-pooled output
(`heads/pre` of the heads store) over the training folds. Everything downstream is
recomputed, then the frozen audio projection and the zero-shot head give the logits.
Per head the map is one 24×24 matrix A_h (Φᵀ diag(λ − 1) Φ, or Φᵀ diag(λ) Φ − I), so
λ = 1 under `keep` makes A = 0 and the logits are exactly the zero-shot ones.

Only λ is trained; the encoder is held by reference (never registered, copied or put in
training mode: BatchNorm statistics stay frozen, no SpecAugment). Stages before the first
injected one do not depend on λ, so the stream entering it is computed once per clip
(no grad) and training starts from there; for stage 0 the input is the log-mel itself
(the patch embedding is cheap). Memory for that cache, float32 per clip: stage 0 the
log-mel, 256 KB; stage 1 [1024, 192], 768 KB; stage 2 [256, 384], 384 KB; stage 3
[64, 768], 192 KB (HTSAT-tiny; 1600 clips at stage 1: 1.2 GB).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .params import ParamError
from .residual import BEYOND, UnitBases, fit_bases
from .stores import StoreError, open_store
from .units import parse_unit
from .zeroshot import FrozenHead

PRE = "heads/pre"


# --------------------------------------------------------------------------- heads store


@dataclass
class HeadOutputs:
    """What inject mode needs from an extraction store: pooled per-head outputs before the projection."""

    path: Path
    pre: np.ndarray  # [N, heads, 24] token-mean head outputs before the output projection
    label: np.ndarray
    fold: np.ndarray
    clip_id: np.ndarray
    head_names: list[str]  # layers.{s}.blocks.{b}.attn.head{h}, in storage order
    classes: list[str]
    weights: str
    variant: str
    mel_sha256: str

    @property
    def n(self) -> int:
        return len(self.label)


def head_name(stage: int, block: int, head: int) -> str:
    return f"layers.{stage}.blocks.{block}.attn.head{head}"


def read_head_outputs(path: str | Path) -> HeadOutputs:
    """`heads/pre` and the clip table of an extraction store; errors name the file."""
    path = Path(path)
    g = open_store(path, attrs=("heads", "classes", "weights"), kind="heads store", hint="run the extract stage")
    if PRE not in g:
        raise StoreError(f"{path}: missing array '{PRE}' (residual.mode: inject and ablation.total need 'pre' in extract.regimes)")
    for name in ("label", "fold", "clip_id"):
        if name not in g:
            raise StoreError(f"{path}: missing array '{name}'")
    attrs = dict(g.attrs)
    pre = np.asarray(g[PRE][:], dtype=np.float32)
    label = np.asarray(g["label"][:], dtype=np.int64)
    rows = [tuple(int(v) for v in r) for r in attrs["heads"]]
    n = len(label)
    if pre.ndim != 3 or pre.shape[:2] != (n, len(rows)):
        raise StoreError(f"{path}: '{PRE}' has shape {pre.shape}; expected [{n}, {len(rows)}, d] (attribute 'heads')")
    classes = list(attrs["classes"])
    if n and (label.min() < 0 or label.max() >= len(classes)):
        raise StoreError(f"{path}: labels outside 0..{len(classes) - 1} (attribute 'classes')")
    return HeadOutputs(
        path=path, pre=pre, label=label, fold=np.asarray(g["fold"][:], dtype=np.int64),
        clip_id=np.array([str(c) for c in g["clip_id"][:]]), head_names=[head_name(*r) for r in rows],
        classes=classes, weights=str(attrs["weights"]), variant=str(attrs.get("variant", "tiny")),
        mel_sha256=str(attrs.get("mel_sha256", "")),
    )


def fit_head_bases(heads: HeadOutputs, clips: np.ndarray, threshold: float) -> UnitBases:
    """Mean and PCA of every head's pooled pre-projection output over `clips` (the training folds)."""
    return fit_bases(heads.pre[clips], np.arange(len(heads.head_names)), heads.head_names, threshold)


def restrict(bases: UnitBases, stages) -> UnitBases:
    """The bases of the heads in `stages` only (units and components in the same order)."""
    keep = [u for u, name in enumerate(bases.unit_names) if parse_unit(name)["kind"] == "head" and parse_unit(name)["stage"] in set(stages)]
    slices = bases.unit_slices()
    rows = np.concatenate([np.arange(slices[u].start, slices[u].stop) for u in keep]) if keep else np.zeros(0, np.int64)
    new_owner = np.concatenate([np.full(slices[u].stop - slices[u].start, i) for i, u in enumerate(keep)]) if keep else rows
    return dataclasses.replace(
        bases, unit_names=[bases.unit_names[u] for u in keep], unit_index=bases.unit_index[keep],
        means=bases.means[keep], components=bases.components[rows], owner=new_owner.astype(np.int64),
        explained=bases.explained[rows],
    )


# --------------------------------------------------------------------------- the model


def _reweight(z: torch.Tensor, name: str, maps: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """z + (z − μ_h) A_h for every head h and token: z [B, T, H, d], A [H, d, d], μ [H, d]."""
    return z + torch.einsum("bthd,hde->bthe", z - means, maps)


class InjectResiDual(nn.Module):
    """ResiDual on the heads of the chosen stages inside the hooked forward, then the frozen zero-shot head.

    `forward(x)`: x is the log-mel [B, 1001, 64] when the first injected stage is 0, else the
    stream entering it (see `entry_inputs`). Only `lam` is trainable.
    """

    def __init__(self, hooked, head: FrozenHead, bases: UnitBases, stages, beyond: str = "keep"):
        super().__init__()
        if beyond not in BEYOND:
            raise ParamError(f"params: 'residual.beyond' must be one of {', '.join(BEYOND)}, got {beyond!r}")
        stages = sorted(set(stages))
        if not stages:
            raise ParamError("params: 'inject_layers' must name at least one stage")
        hooked.model.requires_grad_(False)
        self.hooked = hooked  # not an nn.Module: the encoder is held by reference, never copied or trained
        self.start, self.stages, self.beyond = stages[0], stages, beyond
        self.head = head.requires_grad_(False)
        bases = restrict(bases, stages)
        self.bases = bases
        comps = torch.from_numpy(bases.components)
        d = comps.shape[1]
        self.lam = nn.Parameter(torch.ones(len(bases.owner)))
        self.register_buffer("outer", comps[:, :, None] * comps[:, None, :])  # [J, d, d]: φⱼ φⱼᵀ
        self.register_buffer("owner", torch.from_numpy(bases.owner))
        self.register_buffer("means", torch.from_numpy(bases.means))
        self.register_buffer("eye", torch.eye(d))
        self.blocks = self._block_slices(hooked.arch, bases.unit_names, stages)

    @staticmethod
    def _block_slices(arch, names, stages) -> list[tuple[str, slice]]:
        """(hook name, unit slice) per block; the bases must hold every head of every block, in order."""
        expected = [head_name(s, b, h) for s in stages for b in range(arch.depths[s]) for h in range(arch.heads[s])]
        if names != expected:
            missing = sorted(set(expected) - set(names))[:3]
            raise ParamError(f"bases: the heads of stages {stages} are not all there in storage order (e.g. {missing}); rerun 'bases'")
        out, u = [], 0
        for s in stages:
            for b in range(arch.depths[s]):
                out.append((f"layers.{s}.blocks.{b}.attn.hook_z", slice(u, u + arch.heads[s])))
                u += arch.heads[s]
        return out

    def maps(self) -> torch.Tensor:
        """A_h per head [U, d, d]: Φᵀ diag(λ − 1) Φ (keep) or Φᵀ diag(λ) Φ − I (drop)."""
        weight = self.lam - 1 if self.beyond == "keep" else self.lam
        n_units, d = self.means.shape
        maps = torch.zeros(n_units, d, d, dtype=self.outer.dtype, device=self.outer.device)
        maps = maps.index_add(0, self.owner, weight[:, None, None] * self.outer)
        return maps - self.eye if self.beyond == "drop" else maps

    def hooks(self) -> list:
        maps = self.maps()
        return [(name, partial(_reweight, maps=maps[sl], means=self.means[sl])) for name, sl in self.blocks]

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The 768-d pooled embedding with ResiDual applied."""
        x = x.to(self.lam.device, non_blocking=True)
        if self.start == 0:
            return self.hooked(x, hooks=self.hooks())["embedding"]
        return self.hooked(start_stage=self.start, resid=x, hooks=self.hooks())["embedding"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.head.pre(self.embedding(x)))
        return logits.to(x.device)


class FromCache(nn.Module):
    """Feeds `model` the cached inputs of the given clip indices, so folds share one cache (no copies)."""

    def __init__(self, model: nn.Module, cache: torch.Tensor):
        super().__init__()
        self.model = model
        self.cache = cache  # plain attribute: not part of the state dict

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(self.cache[clips])


@torch.no_grad()
def entry_inputs(hooked, mel, stage: int, batch_size: int, device) -> torch.Tensor:
    """What training starts from, for every clip, on the CPU: the log-mel (stage 0) or the
    stream entering `stage` (computed once here, without gradients)."""
    n = mel.shape[0]
    if stage == 0:
        return torch.from_numpy(np.ascontiguousarray(mel[:], dtype=np.float32))
    out = None
    for start in tqdm(range(0, n, batch_size), desc=f"stream into stage {stage}", leave=False):
        chunk = torch.from_numpy(np.asarray(mel[start:start + batch_size], dtype=np.float32)).to(device)
        stream = hooked.stream_into(stage, chunk).float().cpu()
        if out is None:
            out = torch.empty((n, *stream.shape[1:]), dtype=torch.float32)
        out[start:start + len(stream)] = stream
    return out
