"""A tiny but real project tree for inject mode: a mel store of seeded noise clips, its heads
store extracted by the random-weight model, a text side built on that model's projection,
and the download stage's manifest (`weights: random`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from residual_audio.data.stores import seal
from residual_audio.evaluation.zeroshot import TextSide, save_text_side
from residual_audio.models.checkpoints import joint_dim, logit_scale, projection_weights
from residual_audio.models.laion import MelFrontEnd, log_mel, mel_fingerprint

CLASSES = ["quiet", "loud"]


def noise_mel(model, n: int, seed: int = 3) -> tuple[torch.Tensor, np.ndarray]:
    """Log-mels of n seeded noise clips; the label (quiet 0 / loud 1) is learnable from the level."""
    gen = torch.Generator().manual_seed(seed)
    label = np.arange(n) % 2
    level = torch.where(torch.from_numpy(label) == 1, 0.3, 0.03) * (1 + 0.3 * torch.rand(n, generator=gen))
    wave = torch.randn(n, MelFrontEnd.of(model).clip_samples, generator=gen) * level[:, None]
    return log_mel(model, wave), label.astype(np.int64)


def text_side(model, classes=CLASSES, seed: int = 0) -> TextSide:
    """Random class vectors with the model's own projection and temperature (no tokenizer needed)."""
    gen = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(len(classes), joint_dim(model), generator=gen), dim=-1).numpy()
    return TextSide(list(classes), emb, logit_scale(model), projection_weights(model), "random",
                    ["This is a sound of {label}."])


def write_mel_store(path: Path, model, n: int, seed: int = 3) -> Path:
    mel, label = noise_mel(model, n, seed)
    g = zarr.open_group(str(path), mode="w")
    g.create_array("mel", data=mel.numpy().astype(np.float32), chunks=(n, 1001, 64))
    ids = g.create_array("clip_id", shape=(n,), dtype=str, chunks=(n,))
    ids[:] = np.array([f"clip-{i:03d}" for i in range(n)], dtype=object)
    g.create_array("label", data=label, chunks=(n,))
    g.create_array("fold", data=np.zeros(n, np.int64), chunks=(n,))
    g.attrs.update(dataset=path.stem, classes=CLASSES, mel_sha256=mel_fingerprint(model), weights="random",
                   audio=MelFrontEnd.of(model).settings())
    seal(g)
    return path


def write_project_data(root: Path, model, dataset: str = "toy", n: int = 12) -> None:
    """data/mel, data/heads (extracted), data/text and data/models/manifest.json under `root`."""
    from residual_audio.stages.extract import extract

    mel = write_mel_store(root / "data/mel" / f"{dataset}.zarr", model, n)
    extract(model, mel, root / "data/heads" / f"{dataset}.zarr", batch_size=n, device="cpu")
    save_text_side(root / "data/text" / f"{dataset}.npz", text_side(model))
    (root / "data/models").mkdir(parents=True, exist_ok=True)
    (root / "data/models/manifest.json").write_text(json.dumps({"weights": "random", "checkpoint": None, "tokenizer": None}))
