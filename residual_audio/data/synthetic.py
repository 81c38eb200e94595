"""Synthetic extraction stores with the exact layout of `data/heads/<dataset>.zarr`.

For tests and benchmarks: units of HTSAT-tiny's real names and shapes whose sum plus the
constant is the embedding, with a known structure — a few heads carry the class signal,
a few carry strong class-independent nuisance in a low-rank subspace. Zero-shot suffers
from the nuisance; ResiDual can learn to switch those components off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..evaluation.zeroshot import TextSide
from ..models.laion import mlp_weights

DEPTHS, HEADS, WIDTH, HEAD_DIM, DIM = (2, 2, 6, 2), (4, 8, 16, 32), 96, 24, 768


def unit_names(depths=DEPTHS, heads=HEADS) -> list[str]:
    names = ["patch_embed"]
    for s, (d, h) in enumerate(zip(depths, heads)):
        for b in range(d):
            names += [f"layers.{s}.blocks.{b}.attn.head{i}" for i in range(h)]
            names.append(f"layers.{s}.blocks.{b}.mlp")
    return names


def head_rows(depths=DEPTHS, heads=HEADS) -> list[list[int]]:
    return [[s, b, h] for s, (d, hh) in enumerate(zip(depths, heads)) for b in range(d) for h in range(hh)]


def synthetic_world(
    n_per_class: int = 4,
    n_classes: int = 5,
    n_folds: int = 5,
    rank: int = 6,
    signal: float = 1.0,
    nuisance: float = 20.0,
    n_signal_units: int = 8,
    n_nuisance_units: int = 4,
    seed: int = 0,
    first_fold: int = 1,
):
    """Arrays of a store (dict) and the matching random-weight text side.

    Clips are ordered class by class; fold of the i-th clip of a class is i mod n_folds
    (+ first_fold), as in ESC-50. Every unit is rank-`rank` noise; `n_signal_units` heads
    add a class prototype; `n_nuisance_units` heads add large rank-`rank` nuisance.
    """
    rng = np.random.default_rng(seed)
    names = unit_names()
    head_idx = [i for i, n in enumerate(names) if ".attn.head" in n]
    n = n_per_class * n_classes
    label = np.repeat(np.arange(n_classes), n_per_class)
    fold = np.tile(np.arange(n_per_class) % n_folds + first_fold, n_classes)
    u = len(names)
    units = np.empty((n, u, DIM), dtype=np.float32)
    for j in range(u):
        basis = rng.standard_normal((rank, DIM)) / np.sqrt(DIM)
        scale = np.geomspace(1.0, 0.1, rank)[None, :] * 0.3
        units[:, j, :] = (rng.standard_normal((n, rank)) * scale) @ basis
    chosen = rng.permutation(head_idx)
    signal_units, nuisance_units = chosen[:n_signal_units], chosen[n_signal_units : n_signal_units + n_nuisance_units]
    prototypes = rng.standard_normal((n_classes, DIM)) / np.sqrt(DIM)
    for j in signal_units:
        units[:, j, :] += signal * prototypes[label] * (1 + 0.1 * rng.standard_normal((n, 1)))
    for j in nuisance_units:
        basis = rng.standard_normal((2, DIM)) / np.sqrt(DIM)
        units[:, j, :] += nuisance * rng.standard_normal((n, 2)) @ basis
    const = np.tile(rng.standard_normal(DIM).astype(np.float32) * 0.1, (n, 1))
    embedding = (units.sum(1, dtype=np.float64) + const).astype(np.float32)

    text = synthetic_text_side([f"class_{c}" for c in range(n_classes)], prototypes * signal * n_signal_units, const[0], seed)
    with torch.no_grad():
        proj = _projection(text)
        audio_embed = nn.functional.normalize(proj(torch.from_numpy(embedding)), dim=-1).numpy()
    n_heads = len(head_idx)
    arrays = {
        "embedding": embedding,
        "audio_embed": audio_embed,
        "heads/pre": rng.standard_normal((n, n_heads, HEAD_DIM)).astype(np.float32),
        "direct/units": units,
        "direct/const": const,
        "clip_id": np.array([f"clip{i:05d}" for i in range(n)]),
        "label": label.astype(np.int64),
        "fold": fold.astype(np.int64),
    }
    for s, (d, h) in enumerate(zip(DEPTHS, HEADS)):
        arrays[f"heads/post/stage{s}"] = rng.standard_normal((n, d * h, WIDTH * 2**s)).astype(np.float32)
    attrs = {
        "variant": "tiny",
        "checkpoint_sha256": "",
        "weights": "random",
        "heads": head_rows(),
        "units": names,
        "classes": text.classes,
        "dataset": "synthetic",
    }
    truth = {"signal_units": [names[j] for j in signal_units], "nuisance_units": [names[j] for j in nuisance_units]}
    return arrays, attrs, text, truth


def synthetic_text_side(classes, prototypes: np.ndarray, const: np.ndarray, seed: int = 0) -> TextSide:
    """A seeded random audio projection, and class vectors = projected class prototypes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 17)
        proj = nn.Sequential(nn.Linear(DIM, 512), nn.ReLU(), nn.Linear(512, 512))
    with torch.no_grad():
        emb = nn.functional.normalize(proj(torch.from_numpy((prototypes + const).astype(np.float32))), dim=-1)
    return TextSide(
        classes=list(classes),
        class_embeddings=emb.numpy().astype(np.float32),
        logit_scale=float(1 / 0.07),
        projection=mlp_weights(proj),
        weights="random",
        templates=["This is a sound of {label}."],
    )


def _projection(text: TextSide) -> nn.Module:
    proj = nn.Sequential(nn.Linear(DIM, 512), nn.ReLU(), nn.Linear(512, 512))
    p = text.projection
    proj[0].weight.data, proj[0].bias.data = torch.from_numpy(p["w1"]), torch.from_numpy(p["b1"])
    proj[2].weight.data, proj[2].bias.data = torch.from_numpy(p["w2"]), torch.from_numpy(p["b2"])
    return proj


def write_store(path: str | Path, arrays: dict, attrs: dict) -> Path:
    """Write arrays and attributes as a zarr v3 store with the extraction layout."""
    import warnings

    import zarr

    from .stores import seal

    path = Path(path)
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fixed-length unicode clip ids have no v3 spec yet
        for name, value in arrays.items():
            g.create_array(name, data=value, chunks=value.shape if value.size else None)
    g.attrs.update(attrs)
    seal(g)
    return path


def synthetic_store(path: str | Path, **kwargs):
    """Write a synthetic store at `path`; returns (text side, truth)."""
    arrays, attrs, text, truth = synthetic_world(**kwargs)
    write_store(path, arrays, attrs)
    return text, truth


def in_memory_store(arrays: dict, attrs: dict, path: str = "<memory>"):
    """The `UnitStore` that `read_units` would return for these arrays, without writing them."""
    from .units import UnitStore

    return UnitStore(
        path=Path(path),
        units=arrays["direct/units"],
        const=arrays["direct/const"],
        embedding=arrays["embedding"],
        label=arrays["label"],
        fold=arrays["fold"],
        unit_names=list(attrs["units"]),
        classes=list(attrs["classes"]),
        weights=attrs["weights"],
        variant=attrs["variant"],
        audio_embed=arrays["audio_embed"],
        attrs=dict(attrs),
    )
