"""Model core: offline build, official-format checkpoints, tokenizer, equality with LAION's own forward."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from residual_audio.models import checkpoints
from residual_audio.models import laion as clap


@pytest.fixture(scope="module")
def waveforms():
    gen = torch.Generator().manual_seed(3)
    t = torch.arange(480000) / 48000
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    noise = 0.1 * torch.randn(480000, generator=gen)
    return torch.stack([tone, noise, tone + noise]).float()


def test_architecture_of_tiny(model):
    arch = clap.Architecture.of(model)
    assert arch.depths == (2, 2, 6, 2)
    assert arch.heads == (4, 8, 16, 32)
    assert arch.widths == (96, 192, 384, 768)
    assert arch.head_dim == 24
    assert arch.n_heads == 184
    assert model.weights == "random"
    assert not model.training


def test_seeded_random_weights_are_reproducible(model):
    again = clap.build_model("tiny", seed=0)
    other = clap.build_model("tiny", seed=1)
    a, b, c = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["audio_projection.0.weight"], c["audio_projection.0.weight"])
    # biases are perturbed so every term of the forward is exercised
    assert a["audio_branch.layers.0.blocks.0.attn.proj.bias"].abs().sum() > 0


@pytest.mark.parametrize("with_position_ids", [True, False])
def test_official_format_round_trip(model, official_checkpoint, tmp_path, waveforms, with_position_ids):
    path = official_checkpoint  # written with position ids
    if not with_position_ids:
        path = tmp_path / "630k-audioset-best.pt"
        clap.save_checkpoint(model, path, with_position_ids=False)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert set(raw) >= {"state_dict", "optimizer", "epoch"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    assert (f"module.{clap.POSITION_IDS_KEY}" in raw["state_dict"]) == with_position_ids
    assert isinstance(raw["epoch"], np.integer)

    loaded = checkpoints.load_model(path)
    assert loaded.weights == "pretrained" and loaded.variant == "tiny"
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    mel = clap.log_mel(model, waveforms[:2])
    with torch.no_grad():
        a = clap.audio_embedding_from_mel(model, mel)["audio_embed"]
        b = clap.audio_embedding_from_mel(loaded, mel)["audio_embed"]
    assert torch.equal(a, b)


def test_variant_is_read_from_projection_shape(official_checkpoint):
    path = official_checkpoint
    with pytest.raises(clap.CheckpointError, match="HTSAT-tiny weights but HTSAT-base"):
        checkpoints.load_model(path, variant="base")
    state = clap.read_checkpoint(path)
    assert clap.variant_of(state) == "tiny"
    state["audio_projection.0.weight"] = torch.zeros(512, 1024)
    assert clap.variant_of(state) == "base"


def test_bad_checkpoints_are_refused_by_name(model, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(clap.CheckpointError, match="nope.pt: checkpoint file not found"):
        checkpoints.load_model(missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(clap.CheckpointError, match="garbage.pt: not a readable PyTorch checkpoint"):
        checkpoints.load_model(garbage)

    other = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(3)}}, other)
    with pytest.raises(clap.CheckpointError, match="resnet.pt: .*not a LAION-CLAP checkpoint"):
        checkpoints.load_model(other)

    # the audio side only (the text branch is most of a full file's 600 MB): these are refused on
    # their audio keys, before the text branch would matter
    audio = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("text_")}
    fusion = tmp_path / "630k-fusion-best.pt"
    torch.save({"state_dict": {**audio, "module.audio_branch.fusion_model.local_att.0.weight": torch.zeros(1)}}, fusion)
    with pytest.raises(clap.CheckpointError, match="fusion checkpoint"):
        checkpoints.load_model(fusion)

    truncated = tmp_path / "truncated.pt"
    state = {k: v for k, v in audio.items() if "layers.3" not in k}
    torch.save({"state_dict": state}, truncated)
    with pytest.raises(clap.CheckpointError, match="truncated.pt: weights do not match"):
        checkpoints.load_model(truncated)


def test_audio_embedding_equals_laion_get_audio_embedding(model, waveforms):
    """Our path (cached mel -> embedding) against LAION's own CLAP.get_audio_embedding."""
    clap.import_laion_clap()
    from laion_clap.training.data import get_audio_features

    inputs = [
        get_audio_features({}, w, 480000, "rand_trunc", "repeatpad", model.audio_cfg.__dict__) for w in waveforms
    ]
    with torch.no_grad():
        reference = model.get_audio_embedding(inputs)
        ours = clap.audio_embedding_from_mel(model, clap.log_mel(model, waveforms))
    assert ours["embedding"].shape == (3, 768)
    torch.testing.assert_close(ours["audio_embed"], reference, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours["audio_embed"].norm(dim=-1), torch.ones(3))


def test_forward_from_mel_refuses_train_mode(model, waveforms):
    model.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            clap.audio_embedding_from_mel(model, torch.zeros(1, 1001, 64))
    finally:
        model.eval()


def test_mel_front_end_matches_model_and_checkpoint(model, official_checkpoint, waveforms):
    front = checkpoints.front_end("random")
    assert torch.equal(front(waveforms), clap.log_mel(model, waveforms))
    assert front.fingerprint() == clap.mel_fingerprint(model)
    assert checkpoints.front_end(official_checkpoint).fingerprint() == front.fingerprint()


def test_text_embedding_equals_laion_get_text_embedding(model):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 50000, (2, 77), generator=gen)
    ids[:, 0], ids[:, 9] = 0, 2
    mask = torch.zeros(2, 77, dtype=torch.long)
    mask[:, :10] = 1
    ids[:, 10:] = 1
    tokens = {"input_ids": ids, "attention_mask": mask}
    ours = checkpoints.text_embedding(model, tokens)
    with torch.no_grad():
        reference = model.get_text_embedding({k: v.clone() for k, v in tokens.items()})
    torch.testing.assert_close(ours, reference)


@pytest.mark.shared
def test_real_tokenizer_tokenizes_like_roberta_base(tokenizer):
    assert len(tokenizer) == clap.VOCAB_SIZE
    assert tokenizer("This is a sound of dog.")["input_ids"] == [0, 713, 16, 10, 2369, 9, 2335, 4, 2]
    batch = clap.tokenize(tokenizer, ["This is a sound of dog."])
    assert batch["input_ids"].shape == (1, 77)
    assert int(batch["attention_mask"].sum()) == 9
    assert int(batch["input_ids"][0, 9]) == 1  # <pad>


@pytest.mark.shared
def test_class_embeddings_average_templates(model, tokenizer):
    one = checkpoints.class_embeddings(model, tokenizer, ["dog", "rain"])
    assert one.shape == (2, 512)
    assert torch.allclose(one.norm(dim=-1), torch.ones(2))
    spaced = checkpoints.class_embeddings(model, tokenizer, ["chirping_birds"])
    direct = checkpoints.text_embedding(model, clap.tokenize(tokenizer, ["This is a sound of chirping birds"]))
    torch.testing.assert_close(spaced, direct)
    two = checkpoints.class_embeddings(model, tokenizer, ["dog"], templates=("{label}", "a {label} barking"))
    a = checkpoints.text_embedding(model, clap.tokenize(tokenizer, ["dog"]))
    b = checkpoints.text_embedding(model, clap.tokenize(tokenizer, ["a dog barking"]))
    torch.testing.assert_close(two, torch.nn.functional.normalize(a + b, dim=-1))


def test_tokenizer_files_are_checked(tmp_path):
    with pytest.raises(clap.TokenizerError, match="vocab.json: tokenizer file not found"):
        clap.load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text('{"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(clap.TokenizerError, match="expected 50265"):
        clap.load_tokenizer(tmp_path)


@pytest.mark.shared
def test_tokenizer_without_merges_is_refused(shared_data, tmp_path):
    (tmp_path / "vocab.json").write_bytes((shared_data / "roberta-base" / "vocab.json").read_bytes())
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(clap.TokenizerError, match="tokenizes to .* expected roberta-base"):
        clap.load_tokenizer(tmp_path)


def test_laion_clap_import_never_reaches_the_hub():
    """`import laion_clap` asks the hub for three tokenizers; offline it must fail fast, not retry."""
    import subprocess
    import sys
    import time

    code = (
        "import os; os.environ['HF_HUB_OFFLINE'] = '0'\n"
        "import huggingface_hub.constants\n"  # imported first, with the hub switched on
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('network access attempted')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from residual_audio.models import laion\n"
        "laion.import_laion_clap()\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1], env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
    assert time.perf_counter() - start < 120
