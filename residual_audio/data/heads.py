"""The one reader of the heads store, `data/heads/<dataset>.zarr` (written by the `extract` stage).

`HeadsStore.open` checks, once, everything any stage relies on: the store is sealed and complete
(`stores.open_store`), its clip table (`label`, `fold`, `clip_id`) has one row per clip, the labels
index the attribute `classes`, the `heads` rows match `heads/pre` and each `heads/post/stage{s}`, and
the direct decomposition's arrays agree with the embedding's shape. Arrays are read through `read`,
which refuses NaN or inf naming the array. The views the stages use are built from it:
`data.units.read_units` (the direct decomposition, for the methods), `methods.residual.inject.read_head_outputs`
(pooled head outputs, for inject mode and the ablation) and `analysis.geometry.open_store` (per-head clouds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .stores import StoreError, open_store

HINT = "run the extract stage"
CLIP_TABLE = ("label", "fold")  # and `clip_id`, checked when present (readers that match clips need it)
PRE = "heads/pre"
DIRECT = ("embedding", "direct/units", "direct/const")
WEIGHTS = ("random", "pretrained")


@dataclass
class HeadsStore:
    path: Path
    group: object = field(repr=False)
    attrs: dict
    rows: np.ndarray  # [H, 3] (stage, block, head) of every head, in heads/pre storage order
    classes: list[str]
    label: np.ndarray  # [N] int64
    fold: np.ndarray  # [N] int64
    clip_id: np.ndarray | None  # [N] str

    @property
    def n(self) -> int:
        return len(self.label)

    @property
    def weights(self) -> str:
        return str(self.attrs["weights"])

    @property
    def variant(self) -> str:
        return str(self.attrs.get("variant", "tiny"))

    def has(self, key: str) -> bool:
        return key in self.group

    @staticmethod
    def regime_key(regime: str, stage: int) -> str:
        """The array holding one stage's heads: `pre` (before the output projection, all stages in one
        array) or `post` (after it, one array per stage)."""
        if regime not in ("pre", "post"):
            raise ValueError(f"unknown regime {regime!r}; expected 'pre' or 'post'")
        return PRE if regime == "pre" else f"heads/post/stage{stage}"

    def clouds(self, regime: str, stage: int) -> np.ndarray:
        """The points of every head of one stage, [heads, N, d] float32 (NaN or inf refused)."""
        key = self.regime_key(regime, stage)
        rows = np.flatnonzero(self.rows[:, 0] == stage)
        data = self.read(key, (slice(None), rows)) if regime == "pre" else self.read(key)
        return np.ascontiguousarray(data.transpose(1, 0, 2))

    def read(self, key: str, index=slice(None), dtype=np.float32, finite: bool = True) -> np.ndarray:
        """`key` (or `group[key][index]`) as a numpy array, refused if it holds NaN or inf (unless not `finite`)."""
        if key not in self.group:
            raise StoreError(f"{self.path}: missing array '{key}'")
        data = np.asarray(self.group[key][index], dtype=dtype)
        if finite and data.dtype.kind == "f" and not np.isfinite(data).all():
            raise StoreError(f"{self.path}: array '{key}' holds NaN or inf ({HINT})")
        return data

    @classmethod
    def open(cls, path: str | os.PathLike, need=()) -> "HeadsStore":
        """The store at `path`, checked; `need` names the arrays the caller reads (refused when absent)."""
        path = Path(path)
        group = open_store(path, arrays=CLIP_TABLE + tuple(need), attrs=("heads", "classes", "weights"),
                           kind="heads store", hint=HINT)
        attrs = dict(group.attrs)
        if attrs["weights"] not in WEIGHTS:
            raise StoreError(f"{path}: attribute 'weights' must be 'random' or 'pretrained', got {attrs['weights']!r}")
        rows = np.asarray(attrs["heads"], dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] != 3:
            raise StoreError(f"{path}: attribute 'heads' must be a list of [stage, block, head] rows")
        table = CLIP_TABLE + (("clip_id",) if "clip_id" in group else ())
        shapes = {key: tuple(group[key].shape) for key in table}
        if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
            raise StoreError(f"{path}: the clip table's arrays must be one row per clip, but their shapes are "
                             + ", ".join(f"{k} {s}" for k, s in shapes.items()))
        n = shapes["label"][0]
        classes = [str(c) for c in attrs["classes"]]
        label = np.asarray(group["label"][:], dtype=np.int64)
        if n and (label.min() < 0 or label.max() >= len(classes)):
            raise StoreError(f"{path}: labels outside 0..{len(classes) - 1} (attribute 'classes')")
        if PRE in group and (group[PRE].ndim != 3 or group[PRE].shape[:2] != (n, len(rows))):
            raise StoreError(f"{path}: '{PRE}' has shape {tuple(group[PRE].shape)}; expected [{n}, {len(rows)}, d] "
                             "(attribute 'heads')")
        for stage in sorted(set(rows[:, 0].tolist())):
            key, expected = f"heads/post/stage{stage}", int((rows[:, 0] == stage).sum())
            if key in group and (group[key].ndim != 3 or group[key].shape[:2] != (n, expected)):
                raise StoreError(f"{path}: '{key}' has shape {tuple(group[key].shape)}, expected [{n}, {expected}, width]")
        if all(k in group for k in DIRECT):
            units, emb, const = (group[k] for k in ("direct/units", "embedding", "direct/const"))
            names = attrs.get("units")
            if names is None:
                raise StoreError(f"{path}: missing attribute 'units'")
            if units.ndim != 3 or units.shape[:2] != (n, len(names)):
                raise StoreError(f"{path}: direct/units has shape {tuple(units.shape)}; expected [{n}, {len(names)}, D]")
            if emb.shape != (n, units.shape[2]) or const.shape != emb.shape:
                raise StoreError(f"{path}: embedding/direct/const shapes do not match direct/units")
        fold = np.asarray(group["fold"][:], dtype=np.int64)
        clip_id = np.array([str(c) for c in group["clip_id"][:]]) if "clip_id" in group else None
        return cls(path, group, attrs, rows, classes, label, fold, clip_id)
