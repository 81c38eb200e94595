"""Shared fixtures. Tests run offline on seeded random weights; real-data tests skip without ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESIDUAL_AUDIO_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def model():
    """HTSAT-tiny CLAP with seeded random weights (built once per test run)."""
    from residual_audio.clap import build_model

    return build_model("tiny", seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real-data tests need ../shared)")
    return path


@pytest.fixture(scope="session")
def tokenizer(shared_data):
    from residual_audio.clap import load_tokenizer

    return load_tokenizer(shared_data / "roberta-base")


@pytest.fixture(scope="session")
def base_model():
    """HTSAT-base CLAP with seeded random weights (built once per test run)."""
    from residual_audio.clap import build_model

    return build_model("base", seed=0)


@pytest.fixture(scope="session")
def waveforms():
    """Two seeded 10-s noise clips at 48 kHz with different loudness."""
    import torch

    gen = torch.Generator().manual_seed(7)
    return torch.randn(2, 480000, generator=gen) * torch.tensor([[0.05], [0.3]])


# Tests that build or run a CLAP model (directly or through a fixture that does) carry the
# `model` marker, so `pytest -m "not model"` is a quick loop; `slow` ones run whole stages.
MODEL_FIXTURES = {"model", "base_model", "tokenizer"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.model)
