"""Direct decomposition: units + constant rebuild the embedding, and single units match an
independent computation through the hooked forward with everything else frozen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from residual_audio.models.decompose import DirectDecomposition, pooled_head_outputs, relative_error, unit_names
from residual_audio.models.hooked import HookedHTSAT
from residual_audio.models.laion import Architecture, log_mel


@pytest.fixture(scope="module")
def decomposition(model):
    return DirectDecomposition(model)


@pytest.fixture(scope="module")
def mel(model, waveforms):
    return log_mel(model, waveforms)


@pytest.fixture(scope="module")
def full(decomposition, mel):
    """Output and every hook value of one forward."""
    with torch.no_grad():
        return decomposition.hooked.run_with_cache(mel)


def test_unit_names_follow_the_architecture(model):
    names = unit_names(Architecture.of(model))
    assert len(names) == 1 + 184 + 12
    assert names[:2] == ["patch_embed", "layers.0.blocks.0.attn.head0"]
    assert names[5] == "layers.0.blocks.0.mlp"
    assert names[-1] == "layers.3.blocks.1.mlp" and names[-2] == "layers.3.blocks.1.attn.head31"


def test_units_and_constant_rebuild_the_embedding_tiny(decomposition, full):
    out, cache = full
    parts = decomposition.contributions(cache)
    assert parts["units"].shape == (2, 197, 768)
    err = relative_error(parts["units"], parts["const"], out["embedding"])
    assert (err <= 1e-4).all(), err
    # every kind of unit contributes: a decomposition that dropped one would not add up
    assert (parts["units"].norm(dim=-1) > 1e-3).all()


def test_units_and_constant_rebuild_the_embedding_base(base_model, waveforms):
    mel = log_mel(base_model, waveforms[1:])
    out = DirectDecomposition(base_model)(mel)
    assert out["units"].shape == (1, 1 + 280 + 18, 1024)
    err = relative_error(out["units"], out["const"], out["embedding"])
    assert (err <= 1e-4).all(), err


def _frozen_hooks(cache, keep: set[str]):
    """Replace every LayerNorm σ and every block output except `keep` by its cached value."""
    hooks = {}
    for name, value in cache.items():
        if name.endswith("_scale") or (name.endswith(("hook_attn_out", "hook_mlp_out")) and name not in keep):
            hooks[name] = (lambda v: lambda t, n: v)(value)
    return hooks


@pytest.mark.parametrize("unit", ["layers.0.blocks.1.attn.head2", "layers.2.blocks.4.mlp", "layers.1.blocks.0.attn.head7"])
def test_a_unit_equals_its_effect_with_everything_else_frozen(decomposition, full, unit):
    """Removing the unit from the frozen (hence affine) network moves the embedding by exactly its direct term."""
    out, cache = full
    hooked = decomposition.hooked
    prefix, _, part = unit.rpartition(".")
    s = int(unit.split(".")[1])
    if part.startswith("head"):
        h = int(part[4:])
        keep = {f"{prefix.rpartition('.')[0]}.hook_attn_out"}

        def remove(r, name):
            r = r.clone()
            r[:, :, h] = 0
            return r

        removal = {f"{prefix}.hook_result": remove}
    else:
        keep = {f"{prefix}.hook_mlp_out"}
        removal = {f"{prefix}.hook_mlp_out": lambda m, name: torch.zeros_like(m)}
    start_name = f"layers.{s - 1}.hook_merge_out" if s else "hook_patch_embed"
    hooks = list(_frozen_hooks(cache, keep).items()) + list(removal.items())
    with torch.no_grad():
        without = hooked(start_stage=s, resid=cache[start_name], hooks=hooks)["embedding"]
    expected = out["embedding"] - without
    got = decomposition.contributions(cache)["units"][:, decomposition.units.index(unit)]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert expected.norm() > 1e-3


def test_pooled_head_outputs_sum_to_the_pooled_attention_output(model, full):
    cache = full[1]
    for s, b in [(0, 0), (2, 5), (3, 1)]:
        prefix = f"layers.{s}.blocks.{b}"
        blk = model.audio_branch.layers[s].blocks[b]
        heads = pooled_head_outputs(blk, cache[f"{prefix}.attn.hook_z"].mean(1))
        torch.testing.assert_close(heads.sum(1), cache[f"{prefix}.hook_attn_out"].mean(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(heads, cache[f"{prefix}.attn.hook_result"].mean(1), atol=1e-5, rtol=1e-5)


def esc50_mel(model, paths) -> torch.Tensor:
    """LAION's input for 5-s ESC-50 clips: 44.1→48 kHz, repeat-padded to 10 s, int16-quantised."""
    import soundfile as sf
    from scipy.signal import resample_poly

    clips = []
    for path in paths:
        x, sr = sf.read(path, dtype="float32")
        assert sr == 44100
        x = resample_poly(x, 160, 147).astype(np.float32)
        x = np.tile(x, 480000 // len(x))
        x = np.pad(x, (0, 480000 - len(x)))
        x = (np.clip(x, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32767
        clips.append(x)
    return log_mel(model, torch.from_numpy(np.stack(clips)))


@pytest.mark.shared
def test_units_and_constant_rebuild_the_embedding_on_real_audio(decomposition, model, shared_data):
    folder = shared_data / "esc50-fold4" / "audio"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    paths = sorted(folder.glob("*.wav"))[::150][:3]
    mel = esc50_mel(model, paths)
    out = decomposition(mel)
    err = relative_error(out["units"], out["const"], out["embedding"])
    assert (err <= 1e-4).all(), err
