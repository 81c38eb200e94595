"""Models are checked before they are built: a ClapModel `config.json` with absurd sizes is one
line naming the key (no tensor is allocated), and weights with NaN or inf are refused when read.

The configs come from transformers' own `ClapConfig().to_dict()` and the weight files from torch
and safetensors directly; nothing here is written by the project's code."""

from __future__ import annotations

import json

import pytest
import torch

from residual_audio.models import hf
from residual_audio.models.laion import CheckpointError, load_file


def _folder(tmp_path, **edits):
    from transformers import ClapConfig

    raw = ClapConfig().to_dict()
    for key, value in edits.items():
        section, name = key.split(".")
        raw[section][name] = value
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


def test_the_default_clap_config_is_within_bounds(tmp_path):
    config = hf.read_config(_folder(tmp_path))
    assert list(config.audio_config.depths) == [2, 2, 6, 2]


@pytest.mark.parametrize("key, value", [
    ("audio_config.depths", [2, 2, 6000, 2]),
    ("audio_config.depths", [2, 2, 6]),
    ("text_config.vocab_size", 2_000_000_000),
    ("text_config.hidden_size", -64),
    ("audio_config.num_attention_heads", [4, 8, 16, 0]),
    ("audio_config.num_attention_heads", [5, 8, 16, 32]),
    ("text_config.num_hidden_layers", 10_000),
    ("audio_config.window_size", 0),
])
def test_absurd_config_sizes_are_one_line_before_any_build(tmp_path, key, value):
    import re

    with pytest.raises(CheckpointError, match="config.json: " + re.escape(key)):
        hf.read_config(_folder(tmp_path, **{key: value}))


def test_safetensors_weights_with_nan_are_refused(tmp_path):
    from safetensors.torch import save_file

    weights = {"a.weight": torch.zeros(3, 3), "b.bias": torch.tensor([0.0, float("nan")])}
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"model.safetensors: weight 'b.bias' holds NaN or inf"):
        hf.read_state(tmp_path)


def test_a_laion_checkpoint_with_inf_is_refused(tmp_path):
    state = {"module.audio_branch.x.weight": torch.ones(2), "module.audio_projection.0.weight": torch.ones(2, 2)}
    state["module.audio_projection.0.weight"][1, 1] = float("inf")
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "630k-audioset-best.pt")
    with pytest.raises(CheckpointError, match=r"weight 'audio_projection.0.weight' holds NaN or inf"):
        load_file(tmp_path / "630k-audioset-best.pt")


def test_the_model_stage_refuses_a_bad_clapmodel_folder_naming_it(tmp_path):
    """`model` checks the user's folder before copying anything: the error names that folder's
    config.json (not a temporary or placed copy), and data/models is not written."""
    from safetensors.torch import save_file

    from residual_audio.data.fetch import fetch_model

    (tmp_path / "my-clap").mkdir()
    folder = _folder(tmp_path / "my-clap", **{"audio_config.depths": [2, 2, 6000, 2]})
    save_file({"logit_scale_a": torch.zeros(())}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"^{folder}/config.json: audio_config.depths is \[2, 2, 6000, 2\]"):
        fetch_model(str(folder), None, tmp_path / "data" / "models")
    assert not (tmp_path / "data" / "models").exists()
