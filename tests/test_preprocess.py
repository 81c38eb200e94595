"""Preprocess stage: layout, determinism, forward-from-mel == forward-from-waveform, atomic failure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import zarr

from residual_audio.data import audio
from residual_audio.data.datasets import list_clips
from residual_audio.models import checkpoints
from residual_audio.models import laion as clap
from residual_audio.stages import preprocess


def write_folder_dataset(root: Path, per_class: int = 3, rates=(44100, 16000, 22050)) -> Path:
    """<root>/<class>/*.wav with distinct tones, mixed sample rates, lengths and channel counts."""
    gen = np.random.default_rng(0)
    for c, name in enumerate(["bird", "engine"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            sr = rates[i % len(rates)]
            seconds = [5.0, 3.3, 12.0][i % 3]
            t = np.arange(int(sr * seconds)) / sr
            x = 0.3 * np.sin(2 * np.pi * (300 + 500 * c + 40 * i) * t) + 0.05 * gen.standard_normal(len(t))
            if i == 1:
                x = np.stack([x, 0.5 * x], axis=1)
            sf.write(root / name / f"{name}-{i}.wav", x.astype(np.float32), sr)
    return root


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def front():
    return checkpoints.front_end("random")


def run(tmp_path, clips, classes, front, name="store"):
    store, table = tmp_path / f"{name}.zarr", tmp_path / f"{name}.csv"
    preprocess.preprocess(clips, classes, front, store, table, dataset="folder", weights="random",
                          batch_size=2, shard_clips=4, progress=False)
    return store, table


def test_store_layout_and_byte_identical_rerun(tmp_path, front):
    clips, classes = list_clips("folder", write_folder_dataset(tmp_path / "raw"))
    store, table = run(tmp_path, clips, classes, front)
    g = zarr.open_group(store, mode="r")
    assert g["mel"].shape == (6, 1001, 64) and g["mel"].dtype == np.float32
    assert list(g["clip_id"][:]) == [c.clip_id for c in clips]
    assert list(g["label"][:]) == [c.label for c in clips]
    assert g.attrs["classes"] == classes == ["bird", "engine"]
    assert g.attrs["weights"] == "random" and "RANDOM WEIGHTS" in g.attrs["warning"]
    assert g.attrs["mel_sha256"] == front.fingerprint()
    assert np.isfinite(g["mel"][:]).all()
    header, *rows = table.read_text().splitlines()
    assert header.split(",") == preprocess.CLIP_COLUMNS
    assert {r.split(",")[-1] for r in rows} == {"44100", "16000", "22050"}
    n_files = sum(1 for p in store.rglob("*") if p.is_file())
    assert n_files <= 4 + 2 * 3 + 1  # mel: 2 shards; 3 small arrays; group metadata

    again, table2 = run(tmp_path, clips, classes, front, name="again")
    assert tree_digest(store) == tree_digest(again)
    assert table.read_bytes() == table2.read_bytes()


def test_cached_mel_gives_the_same_embedding_as_laion_from_waveform(tmp_path, model, front):
    """Extraction starts from the cached mel: it must equal LAION's forward from the prepared waveform."""
    clips, classes = list_clips("folder", write_folder_dataset(tmp_path / "raw", per_class=2))
    store, _ = run(tmp_path, clips, classes, front)
    mel = torch.from_numpy(zarr.open_group(store, mode="r")["mel"][:])
    clap.import_laion_clap()
    from laion_clap.training.data import get_audio_features

    waves = [torch.from_numpy(audio.prepare(c.path)[0]) for c in clips]
    inputs = [get_audio_features({}, w, 480000, "rand_trunc", "repeatpad", model.audio_cfg.__dict__) for w in waves]
    with torch.no_grad():
        reference = model.get_audio_embedding(inputs)
    ours = clap.audio_embedding_from_mel(model, mel)["audio_embed"]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_bad_clip_fails_cleanly_and_leaves_nothing(tmp_path, front):
    root = write_folder_dataset(tmp_path / "raw", per_class=2)
    (root / "engine" / "engine-1.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    clips, classes = list_clips("folder", root)
    with pytest.raises(audio.AudioError, match="engine-1.wav"):
        run(tmp_path, clips, classes, front)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "raw"]
    assert leftovers == []


def test_failed_rerun_keeps_the_previous_store(tmp_path, front):
    root = write_folder_dataset(tmp_path / "raw", per_class=2)
    clips, classes = list_clips("folder", root)
    store, _ = run(tmp_path, clips, classes, front)
    before = tree_digest(store)
    sf.write(root / "bird" / "bird-0.wav", np.zeros(8000, np.float32), 16000)
    with pytest.raises(audio.AudioError, match="bird-0.wav: audio is entirely silent"):
        run(tmp_path, clips, classes, front)
    assert tree_digest(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "store.csv", "store.zarr"]


def test_empty_dataset_is_an_error(tmp_path, front):
    with pytest.raises(ValueError, match="no clips"):
        run(tmp_path, [], [], front)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.shared
def test_real_esc50_subset(tmp_path, shared_data, front):
    from residual_audio.data.datasets import select

    clips, classes = list_clips("esc50", shared_data / "esc50-fold4")
    assert len(clips) == 400 and len(classes) == 50
    clips = select(clips, 10, seed=0)
    assert len({c.label for c in clips}) == 10
    store, table = run(tmp_path, clips, classes, front)
    g = zarr.open_group(store, mode="r")
    assert g["mel"].shape == (10, 1001, 64)
    assert set(g["fold"][:]) == {4}
    mel = g["mel"][:]
    # a repeated 5 s clip gives a mel whose two halves match away from the edges
    assert np.allclose(mel[:, 100:400], mel[:, 600:900], atol=1e-3)


def test_workers_write_the_same_store_byte_for_byte(tmp_path, front, monkeypatch):
    """Decoding and resampling in a pool of processes (`preprocess.workers`) gives the store of the one-process
    run, byte for byte: the same clip order, shard by shard. A bad clip still fails in one line naming it."""
    monkeypatch.setattr(preprocess, "MIN_POOL_CLIPS", 4)  # a pool even for this small set
    clips, classes = list_clips("folder", write_folder_dataset(tmp_path / "raw", per_class=5))
    stores = {}
    for workers in (1, 2):
        store, table = tmp_path / f"w{workers}.zarr", tmp_path / f"w{workers}.csv"
        preprocess.preprocess(clips, classes, front, store, table, dataset="folder", weights="random", batch_size=3,
                              shard_clips=4, progress=False, workers=workers)
        stores[workers] = (tree_digest(store), table.read_bytes())
    assert stores[1] == stores[2]
    bad = tmp_path / "raw" / "engine" / "engine-2.wav"
    bad.write_bytes(b"RIFF0000WAVEfmt not audio")
    with pytest.raises(audio.AudioError, match="engine-2.wav"):
        preprocess.preprocess(clips, classes, front, tmp_path / "bad.zarr", tmp_path / "bad.csv", dataset="folder",
                              weights="random", shard_clips=4, progress=False, workers=2)
    assert not (tmp_path / "bad.zarr").exists()
