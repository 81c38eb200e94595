"""Shared fixtures. Tests run offline on seeded random weights; real-data tests skip without ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")  # the DVC projects that tests make send nothing anywhere

REPO = Path(__file__).resolve().parents[1]


def checked(run, params: dict, *args, dataset: str | None = None):
    """`run(params, *args)` as the stage runner calls it: the whole mapping checked against the schema
    first (and `dataset`, when given, against `datasets`), which is where a bad value is refused."""
    from residual_audio.core.params import check_dataset
    from residual_audio.core.schema import validate

    validate(params)
    if dataset is not None:
        check_dataset(params, dataset)
    return run(params, *args)
SHARED = Path(os.environ.get("RESIDUAL_AUDIO_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def model():
    """HTSAT-tiny CLAP with seeded random weights (built once per test run)."""
    from residual_audio.models.laion import build_model

    return build_model("tiny", seed=0)


@pytest.fixture(scope="session")
def official_checkpoint(model, tmp_path_factory) -> Path:
    """The seeded random model written once per test run in LAION's official training-checkpoint
    format (about 600 MB). Shared, read-only, by every test that needs a real `.pt` file: copy or
    hard-link it, never write into it. Hostile variants are small files of their own."""
    from residual_audio.models.laion import save_checkpoint

    path = tmp_path_factory.mktemp("official") / "630k-audioset-best.pt"
    save_checkpoint(model, path)
    path.chmod(0o444)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real-data tests need ../shared)")
    return path


@pytest.fixture(scope="session")
def tokenizer(shared_data):
    from residual_audio.models.laion import load_tokenizer

    return load_tokenizer(shared_data / "roberta-base")


@pytest.fixture(scope="session")
def offline_example(tmp_path_factory):
    """The README's offline example, run once per session (tests/example_run.py); every stage's
    imports and params reads are recorded under `.trace`."""
    from example_run import run_offline_example

    tokenizer = SHARED / "data" / "roberta-base"
    if not tokenizer.is_dir():
        pytest.skip(f"{tokenizer} is absent: the zero-shot head needs the real tokenizer files")
    return run_offline_example(tmp_path_factory.mktemp("example"), tokenizer)


@pytest.fixture(scope="session")
def base_model():
    """HTSAT-base CLAP with seeded random weights (built once per test run)."""
    from residual_audio.models.laion import build_model

    return build_model("base", seed=0)


@pytest.fixture(scope="session")
def waveforms():
    """Two seeded 10-s noise clips at 48 kHz with different loudness."""
    import torch

    gen = torch.Generator().manual_seed(7)
    return torch.randn(2, 480000, generator=gen) * torch.tensor([[0.05], [0.3]])


# Tests that build or run a CLAP model (directly or through a fixture that does) carry the
# `model` marker, so `pytest -m "not model"` is a quick loop; `slow` ones run whole stages.
MODEL_FIXTURES = {"model", "base_model", "tokenizer", "offline_example", "official_checkpoint",
                  "clap_model", "hf_folder", "loaded"}  # the last three: a transformers ClapModel (test_hf_checkpoint)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.model)
