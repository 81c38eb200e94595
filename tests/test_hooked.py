"""The hooked HTS-AT forward against LAION's own forward, on seeded random weights."""

from __future__ import annotations

import pytest
import torch

from residual_audio.models.hooked import HookedHTSAT
from residual_audio.models.laion import audio_embedding_from_mel, log_mel


@pytest.fixture(scope="module")
def mel(model, waveforms):
    return log_mel(model, waveforms)


@pytest.fixture(scope="module")
def hooked(model):
    return HookedHTSAT(model)


@pytest.fixture(scope="module")
def plain(hooked, mel):
    with torch.no_grad():
        return hooked(mel)


@pytest.fixture(scope="module")
def full(hooked, mel):
    """Output and every hook point's value from one forward."""
    with torch.no_grad():
        return hooked.run_with_cache(mel)


@pytest.mark.parametrize("variant", ["tiny", "base"])
def test_matches_laion_forward(variant, request, waveforms):
    model = request.getfixturevalue("model" if variant == "tiny" else "base_model")
    if variant == "base":
        waveforms = waveforms[:1]  # the larger model: one clip is enough
    with torch.no_grad():
        reference = model.get_audio_embedding([{"waveform": w} for w in waveforms])
        mel = log_mel(model, waveforms)
        from_mel = audio_embedding_from_mel(model, mel)
        ours = HookedHTSAT(model)(mel)
    torch.testing.assert_close(ours["audio_embed"], reference, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ours["embedding"], from_mel["embedding"], atol=2e-5, rtol=1e-5)
    # the reference is not trivially matched: it depends on the input and is not constant
    assert ours["embedding"].abs().max() > 1e-2
    if len(waveforms) == 2:
        assert (ours["embedding"][0] - ours["embedding"][1]).abs().max() > 1e-2


def test_hooks_that_only_read_change_nothing(hooked, plain, full):
    out, cache = full
    assert set(cache) == set(hooked.names)
    for key in plain:
        assert torch.equal(out[key], plain[key])
    assert cache["layers.0.blocks.1.attn.hook_z"].shape == (2, 4096, 4, 24)
    assert cache["layers.3.blocks.0.attn.hook_result"].shape == (2, 64, 32, 768)
    assert torch.equal(cache["hook_embedding"], plain["embedding"])


def test_replacing_z_by_itself_changes_nothing_and_by_zeros_changes_the_output(hooked, plain, full):
    name = "layers.2.blocks.3.attn.hook_z"
    start = dict(start_stage=2, resid=full[1]["layers.1.hook_merge_out"])
    with torch.no_grad():
        same = hooked(hooks={name: lambda z, _: z.clone()}, **start)
        zeroed = hooked(hooks={name: lambda z, _: torch.zeros_like(z)}, **start)
    assert torch.equal(same["embedding"], plain["embedding"])
    assert (zeroed["embedding"] - plain["embedding"]).abs().max() > 1e-3


def test_zeroing_one_head_z_equals_setting_its_result_to_its_bias_share(hooked, model, plain, full):
    s, b, h = 1, 1, 5
    prefix = f"layers.{s}.blocks.{b}"
    bias = model.audio_branch.layers[s].blocks[b].attn.proj.bias
    n_heads = model.audio_branch.layers[s].blocks[b].attn.num_heads

    def zero_z(z, _):
        z = z.clone()
        z[:, :, h] = 0
        return z

    def bias_only(r, _):
        r = r.clone()
        r[:, :, h] = bias / n_heads
        return r

    start = dict(start_stage=1, resid=full[1]["layers.0.hook_merge_out"])
    with torch.no_grad():
        via_z = hooked(hooks={f"{prefix}.attn.hook_z": zero_z}, **start)
        via_result = hooked(hooks={f"{prefix}.attn.hook_result": bias_only}, **start)
    torch.testing.assert_close(via_z["embedding"], via_result["embedding"], atol=2e-5, rtol=1e-5)
    assert (via_z["embedding"] - plain["embedding"]).abs().max() > 1e-4


def test_head_results_sum_to_attention_output_and_block_adds_up(full):
    cache = full[1]
    for prefix in ("layers.0.blocks.1", "layers.3.blocks.1"):
        summed = cache[f"{prefix}.attn.hook_result"].sum(2)
        torch.testing.assert_close(summed, cache[f"{prefix}.hook_attn_out"], atol=1e-5, rtol=1e-5)
        post = cache[f"{prefix}.hook_resid_pre"] + cache[f"{prefix}.hook_attn_out"] + cache[f"{prefix}.hook_mlp_out"]
        torch.testing.assert_close(post, cache[f"{prefix}.hook_resid_post"], atol=1e-5, rtol=1e-5)


def test_z_is_in_image_order(model, mel, full):
    """Per-head z equals LAION's windowed projection input, un-windowed with LAION's own functions."""
    import clap_module.htsat as htsat

    branch = model.audio_branch
    s, b = 1, 1  # a shifted block
    blk = branch.layers[s].blocks[b]
    assert blk.shift_size > 0
    captured = {}
    handle = blk.attn.proj.register_forward_pre_hook(lambda mod, args: captured.setdefault("z", args[0]))
    try:
        with torch.no_grad():
            audio_embedding_from_mel(model, mel)
    finally:
        handle.remove()
    H, W = blk.input_resolution
    ws, C = blk.window_size, blk.dim
    windows = captured["z"].view(-1, ws, ws, C)
    image = htsat.window_reverse(windows, ws, H, W)
    image = torch.roll(image, shifts=(blk.shift_size, blk.shift_size), dims=(1, 2))
    expected = image.reshape(mel.shape[0], H * W, blk.attn.num_heads, C // blk.attn.num_heads)
    torch.testing.assert_close(full[1][f"layers.{s}.blocks.{b}.attn.hook_z"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_start_from_cached_stage_equals_full_forward(hooked, plain, full, stage):
    name = f"layers.{stage - 1}.hook_merge_out" if stage else "hook_patch_embed"
    with torch.no_grad():
        resumed = hooked(start_stage=stage, resid=full[1][name])
    for key in plain:
        torch.testing.assert_close(resumed[key], plain[key], atol=0, rtol=0)


def test_bad_hook_names_and_arguments_are_refused(hooked, mel):
    with pytest.raises(KeyError, match="layers.9"):
        hooked(mel, hooks={"layers.9.blocks.0.attn.hook_z": lambda z, n: None})
    with pytest.raises(ValueError, match="start_stage"):
        hooked(start_stage=2)
    with pytest.raises(ValueError, match="shape"):
        hooked(start_stage=3, resid=torch.zeros(2, 64, 768), hooks={"hook_norm_in": lambda x, n: x[:, :3]})
