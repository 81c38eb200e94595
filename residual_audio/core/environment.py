"""What a result was made with: package versions, Python, platform, device, and the data and model
hashes. Recorded in every results file (`meta.environment`) and beside every metric
(`plots/alignment/<dataset>/methods/<method>.json`, `fewshot.json`, `ablation.json`, `plots/geometry/summary.json`),
so two numbers can be told apart by more than their params."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata

# The packages whose versions can move a number (the package itself first).
PACKAGES = ("residual-audio", "torch", "numpy", "scipy", "scikit-learn", "statsmodels", "schedulefree", "transformers",
            "laion-clap", "torchlibrosa", "soundfile", "zarr", "pandas", "dvc")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: str = "cpu") -> str:
    """'cpu', or 'cuda (<the GPU's name>)'."""
    if str(device).startswith("cuda"):
        import torch

        return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"
    return "cpu"


def environment(device: str = "cpu", **data) -> dict:
    """Python, platform, device and package versions, plus `data` (hashes of what the result was made from)."""
    return {"python": platform.python_version(), "platform": platform.platform(), "device": device_name(device),
            "packages": {name: _version(name) for name in PACKAGES}, **data}


def clips_sha256(clip_ids, labels, folds) -> str:
    """A hash of a dataset's clip table (ids, labels, folds): the same clips, labelled and split alike."""
    h = hashlib.sha256()
    for clip, label, fold in zip(clip_ids, labels, folds):
        h.update(f"{clip}\t{int(label)}\t{int(fold)}\n".encode())
    return h.hexdigest()
