"""The torch device a params key names: auto (cuda when available) | cpu | cuda."""

from __future__ import annotations

import torch

from ..core.params import ParamError


def resolve_device(device: str, key: str = "extract.device") -> torch.device:
    """`device` (a value the schema checked) as a torch device; cuda without a CUDA device is refused naming `key`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ParamError(f"params: '{key}' is cuda but no CUDA device is available")
    return torch.device(device)
