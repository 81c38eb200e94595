"""A small heads store (`data/heads/<dataset>.zarr` layout) with a known geometry.

Head (s, b, h) of stage s outputs, before the projection, a Gaussian cloud of dimension
`stage_dims[s]` linearly embedded in HEAD_DIM dims; heads listed in `discriminative`
add a class-dependent offset, so their Fisher score is large while every other head's
is about (n_classes − 1)/N · d/d ≈ 0. After the projection each head is a random linear
map of its pre-projection output plus a bias, as in the real model (rank ≤ HEAD_DIM).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from residual_audio.data.stores import seal

HEAD_DIM = 24


def head_rows(depths, heads) -> list[list[int]]:
    """[stage, block, head] rows in storage order (stage-major, then block, then head)."""
    return [[s, b, h] for s, (depth, n_heads) in enumerate(zip(depths, heads)) for b in range(depth) for h in range(n_heads)]


def write_heads_store(
    path: str | Path,
    *,
    dataset: str = "synthetic",
    n_clips: int = 240,
    n_classes: int = 4,
    depths=(1, 1, 2, 1),
    heads=(2, 2, 4, 4),
    stage_dims=(2, 3, 5, 8),
    discriminative=((3, 0, 0),),
    weights: str = "random",
    duplicate_clips: int = 0,
    seed: int = 0,
) -> dict:
    """Write the store and return the ground truth used to build it."""
    rng = np.random.default_rng(seed)
    rows = head_rows(depths, heads)
    label = np.arange(n_clips) % n_classes
    rng.shuffle(label)
    class_centres = rng.standard_normal((n_classes, HEAD_DIM)) * 6.0
    pre = np.empty((n_clips, len(rows), HEAD_DIM), np.float32)
    for i, (s, b, h) in enumerate(rows):
        basis, _ = np.linalg.qr(rng.standard_normal((HEAD_DIM, stage_dims[s])))
        cloud = rng.standard_normal((n_clips, stage_dims[s])) @ basis.T
        if (s, b, h) in set(map(tuple, discriminative)):
            cloud = cloud + class_centres[label]
        pre[:, i] = cloud + rng.standard_normal(HEAD_DIM)
    if duplicate_clips:
        pre[-duplicate_clips:] = pre[:duplicate_clips]
        label[-duplicate_clips:] = label[:duplicate_clips]

    group = zarr.open_group(str(path), mode="w")
    group.create_array("heads/pre", data=pre, chunks=(min(n_clips, 64), len(rows), HEAD_DIM))
    start = 0
    for s, (depth, n_heads) in enumerate(zip(depths, heads)):
        n = depth * n_heads
        width = n_heads * HEAD_DIM
        proj = rng.standard_normal((n, HEAD_DIM, width)) / np.sqrt(HEAD_DIM)
        bias = rng.standard_normal((n, width)) / n_heads
        post = np.einsum("nhd,hdw->nhw", pre[:, start : start + n].astype(np.float64), proj) + bias
        group.create_array(f"heads/post/stage{s}", data=post.astype(np.float32), chunks=(min(n_clips, 64), n, width))
        start += n
    group.create_array("label", data=label.astype(np.int64))
    group.create_array("fold", data=(np.arange(n_clips) % 5 + 1).astype(np.int64))
    group.attrs.update(
        {
            "heads": rows,
            "classes": [f"class_{c}" for c in range(n_classes)],
            "weights": weights,
            "variant": "synthetic",
            "dataset": dataset,
        }
    )
    seal(group)
    return {"rows": rows, "stage_dims": stage_dims, "discriminative": [tuple(d) for d in discriminative], "label": label}
