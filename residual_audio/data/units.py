"""The direct-contribution units of an extraction store, read once for alignment.

`data/heads/<dataset>.zarr` stores, per clip, the direct contribution of every residual
unit (patch embedding, each attention head, each MLP) to LAION's pooled 768-d embedding,
plus a constant, such that ``units.sum(1) + const == embedding``. Zero-shot evaluation,
head ablation and ResiDual's direct mode all work on these tensors without a model forward.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .heads import DIRECT, HeadsStore
from .stores import StoreError

HEAD_RE = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.head(\d+)$")
MLP_RE = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.mlp$")
UNIT_SETS = ("heads", "heads+mlp")


@dataclass
class UnitStore:
    """Everything alignment needs from one extraction store, as numpy arrays."""

    path: Path
    units: np.ndarray  # [N, U, 768] float32
    const: np.ndarray  # [N, 768]
    embedding: np.ndarray  # [N, 768]
    label: np.ndarray  # [N] int64
    fold: np.ndarray  # [N] int64
    unit_names: list[str]
    classes: list[str]
    weights: str
    variant: str = "tiny"
    checkpoint_sha256: str = ""
    audio_embed: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    clip_id: np.ndarray | None = None  # [N] str, when the store has its clip ids

    @property
    def n(self) -> int:
        return len(self.label)

    def unit_means(self, clips, units=None) -> np.ndarray:
        """[U, D] float32: each unit's direct contribution averaged over `clips` (in float64), for `units`
        (default: all). The one mean of a mean ablation: the ablation stage's and `others: mean`'s."""
        clips = np.sort(np.asarray(clips, dtype=np.int64))
        if len(clips) == 0:
            raise StoreError(f"{self.path}: a mean ablation needs at least one clip to average over")
        sel = slice(None) if units is None else np.asarray(units, dtype=np.int64)
        return self.units[clips][:, sel].mean(0, dtype=np.float64).astype(np.float32)

    def select(self, which: str) -> np.ndarray:
        """Indices of the units ResiDual reweights: 'heads' or 'heads+mlp'."""
        if which not in UNIT_SETS:
            raise StoreError(f"unknown unit set '{which}' (known: {', '.join(UNIT_SETS)})")
        keep = [i for i, name in enumerate(self.unit_names) if HEAD_RE.match(name)]
        if which == "heads+mlp":
            keep += [i for i, name in enumerate(self.unit_names) if MLP_RE.match(name)]
        return np.array(sorted(keep), dtype=np.int64)


def parse_unit(name: str) -> dict:
    """{'kind', 'stage', 'block', 'head'} of a unit name (-1 where it does not apply)."""
    if m := HEAD_RE.match(name):
        return dict(kind="head", stage=int(m[1]), block=int(m[2]), head=int(m[3]))
    if m := MLP_RE.match(name):
        return dict(kind="mlp", stage=int(m[1]), block=int(m[2]), head=-1)
    return dict(kind=name, stage=-1, block=-1, head=-1)


def read_units(path: str | Path, check_sum: bool = True, atol: float = 1e-4, finite: bool = True) -> UnitStore:
    """The direct decomposition of a heads store (read through `heads.HeadsStore`), with its
    exact-sum contract checked: the units and the constant add up to the embedding, and no value is
    NaN or inf (`finite=False` lets the leak tests read a store poisoned on purpose)."""
    store = HeadsStore.open(path, need=DIRECT)
    path, attrs, label, fold = store.path, store.attrs, store.label, store.fold
    units, const, embedding = (store.read(k, finite=finite) for k in ("direct/units", "direct/const", "embedding"))
    names = list(attrs["units"])
    n = len(label)
    if check_sum:
        err = np.abs(units.sum(1, dtype=np.float64) + const - embedding).max() if n else 0.0
        scale = max(1.0, float(np.abs(embedding).max())) if n else 1.0
        if not err <= atol * scale:
            raise StoreError(f"{path}: direct/units.sum(1) + direct/const differs from embedding by {err:.3g}")
    classes = store.classes
    audio_embed = store.read("audio_embed") if store.has("audio_embed") else None
    return UnitStore(
        path=path,
        units=units,
        const=const,
        embedding=embedding,
        label=label,
        fold=fold,
        unit_names=names,
        classes=classes,
        weights=str(attrs["weights"]),
        variant=str(attrs.get("variant", "tiny")),
        checkpoint_sha256=str(attrs.get("checkpoint_sha256", "")),
        audio_embed=audio_embed,
        attrs=attrs,
        clip_id=store.clip_id,
    )
