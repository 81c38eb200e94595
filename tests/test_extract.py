"""The extract stage: store layout and values, streaming, determinism, and no partial output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import checked

from residual_audio.core.params import ParamError
from residual_audio.data.stores import seal
from residual_audio.models.decompose import relative_error
from residual_audio.models.hooked import HookedHTSAT
from residual_audio.models.laion import MelFrontEnd, audio_embedding_from_mel, log_mel, mel_fingerprint
from residual_audio.stages import extract as ex

N = 5
CLASSES = ["dog", "rain", "siren"]


def make_mel_store(path: Path, model, n: int = N, fingerprint: str | None = None, seed: int = 3) -> Path:
    """A mel store with the preprocess layout, from seeded noise clips of different loudness."""
    gen = torch.Generator().manual_seed(seed)
    wave = torch.randn(n, 480000, generator=gen) * torch.linspace(0.02, 0.5, n)[:, None]
    mel = log_mel(model, wave).numpy() if n else np.zeros((0, 1001, 64), np.float32)
    group = zarr.open_group(path, mode="w")
    group.create_array("mel", data=mel.astype(np.float32), chunks=(max(n, 1), 1001, 64))
    ids = group.create_array("clip_id", shape=(n,), dtype=str, chunks=(max(n, 1),))
    if n:
        ids[:] = np.array([f"clip-{i:03d}" for i in range(n)], dtype=object)
    group.create_array("label", data=np.arange(n, dtype=np.int64) % len(CLASSES), chunks=(max(n, 1),))
    group.create_array("fold", data=np.arange(n, dtype=np.int64) % 2 + 1, chunks=(max(n, 1),))
    group.attrs.update(dataset="toy", classes=CLASSES, mel_sha256=fingerprint or mel_fingerprint(model), weights="random",
                       audio=MelFrontEnd.of(model).settings())
    seal(group)
    return path


@pytest.fixture(scope="module")
def mel_store(tmp_path_factory, model):
    return make_mel_store(tmp_path_factory.mktemp("mel") / "toy.zarr", model)


@pytest.fixture(scope="module")
def heads_store(tmp_path_factory, model, mel_store):
    out = tmp_path_factory.mktemp("heads") / "toy.zarr"
    ex.extract(model, mel_store, out, batch_size=2, device="cpu", params={"extract": {"batch_size": 2}})
    return out


@pytest.fixture(scope="module")
def reference(model, mel_store):
    """Every hook value of one forward over the same clips, and LAION's own embedding."""
    mel = torch.from_numpy(zarr.open_group(mel_store, mode="r")["mel"][:])
    with torch.no_grad():
        out, cache = HookedHTSAT(model).run_with_cache(
            mel, names=lambda n: n.endswith(("hook_resid_pre", "hook_z", "hook_attn_out", "hook_resid_post")))
        laion = audio_embedding_from_mel(model, mel)
    return laion, cache


def test_store_has_the_documented_layout(heads_store):
    g = zarr.open_group(heads_store, mode="r")
    shapes = {
        "embedding": (N, 768), "audio_embed": (N, 512), "heads/pre": (N, 184, 24),
        "heads/post/stage0": (N, 8, 96), "heads/post/stage1": (N, 16, 192),
        "heads/post/stage2": (N, 96, 384), "heads/post/stage3": (N, 64, 768),
        "streams/block_in/stage0": (N, 2, 96), "streams/block_in/stage2": (N, 6, 384),
        "streams/stage_out/stage0": (N, 96), "streams/stage_out/stage3": (N, 768),
        "direct/units": (N, 197, 768), "direct/const": (N, 768),
        "clip_id": (N,), "label": (N,), "fold": (N,),
    }
    for name, shape in shapes.items():
        assert g[name].shape == shape, name
    a = g.attrs
    assert a["variant"] == "tiny" and a["weights"] == "random" and a["checkpoint_sha256"] == "random"
    assert a["classes"] == CLASSES and a["regimes"] == ["pre", "post", "direct"]
    assert len(a["heads"]) == 184 and a["heads"][4] == [0, 1, 0] and a["heads"][-1] == [3, 1, 31]
    assert len(a["units"]) == 197 and a["units"][0] == "patch_embed"
    assert a["params"] == {"extract": {"batch_size": 2}}
    assert list(g["clip_id"][:]) == [f"clip-{i:03d}" for i in range(N)]
    np.testing.assert_array_equal(g["label"][:], np.arange(N) % 3)
    np.testing.assert_array_equal(g["fold"][:], np.arange(N) % 2 + 1)
    files = [p for p in Path(heads_store).rglob("*") if p.is_file()]
    assert len(files) < 60


def test_store_values_match_the_forward(heads_store, reference, model):
    g = zarr.open_group(heads_store, mode="r")
    laion, cache = reference
    np.testing.assert_allclose(g["embedding"][:], laion["embedding"].numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(g["audio_embed"][:], laion["audio_embed"].numpy(), atol=2e-6, rtol=1e-5)
    err = relative_error(torch.from_numpy(g["direct/units"][:]), torch.from_numpy(g["direct/const"][:]),
                         torch.from_numpy(g["embedding"][:]))
    assert (err <= 1e-4).all(), err
    # head (stage 2, block 3, head 5) is row 8 + 16 + 3*16 + 5 of heads/pre and row 3*16 + 5 of stage 2's post
    z = cache["layers.2.blocks.3.attn.hook_z"]
    np.testing.assert_allclose(g["heads/pre"][:, 8 + 16 + 48 + 5], z[:, :, 5].mean(1).numpy(), atol=1e-5, rtol=1e-5)
    post = g["heads/post/stage2"][:, 48:64].sum(1)
    np.testing.assert_allclose(post, cache["layers.2.blocks.3.hook_attn_out"].mean(1).numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(g["streams/block_in/stage1"][:, 1],
                               cache["layers.1.blocks.1.hook_resid_pre"].mean(1).numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(g["streams/stage_out/stage2"][:],
                               cache["layers.2.blocks.5.hook_resid_post"].mean(1).numpy(), atol=1e-5, rtol=1e-5)


def test_rerun_is_byte_identical(heads_store, model, mel_store, tmp_path):
    again = ex.extract(model, mel_store, tmp_path / "toy.zarr", batch_size=2, device="cpu",
                       params={"extract": {"batch_size": 2}})
    first = {p.relative_to(heads_store): p.read_bytes() for p in Path(heads_store).rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in Path(again).rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)


def test_regimes_choose_the_arrays(model, mel_store, tmp_path, heads_store):
    out = ex.extract(model, mel_store, tmp_path / "pre.zarr", batch_size=5, device="cpu", regimes=["pre"])
    g = zarr.open_group(out, mode="r")
    assert "heads/pre" in g and "embedding" in g and "streams/block_in/stage3" in g
    assert "heads/post" not in g and "direct" not in g
    assert g.attrs["regimes"] == ["pre"]
    full = zarr.open_group(heads_store, mode="r")
    np.testing.assert_allclose(g["heads/pre"][:], full["heads/pre"][:], atol=1e-5, rtol=1e-5)


def test_writer_streams_uneven_batches_across_many_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "CHUNK_BYTES", 2 * 3 * 4)
    monkeypatch.setattr(ex, "SHARD_BYTES", 4 * 3 * 4)
    assert ex.layout(10, (3,), 4) == (2, 4)
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    group = zarr.open_group(tmp_path / "w.zarr", mode="w")
    writer = ex.ShardedWriter(group, 10, {"x": (3,)})
    assert writer.buffers["x"].shape == (4, 3)  # memory: one shard, not the whole array
    for lo, hi in [(0, 3), (3, 6), (6, 9), (9, 10)]:
        writer.append({"x": data[lo:hi]})
    writer.close()
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "w.zarr", mode="r")["x"][:], data)
    assert len([p for p in (tmp_path / "w.zarr" / "x" / "c").rglob("*") if p.is_file()]) == 3  # three shard files


def _no_output(directory: Path, name: str) -> bool:
    return not any(p.name == name or p.name.startswith(f".{name}.") for p in directory.iterdir())


def test_empty_dataset_leaves_no_store(model, tmp_path):
    store = make_mel_store(tmp_path / "empty.zarr", model, n=0)
    (tmp_path / "out").mkdir()
    with pytest.raises(ex.MelStoreError, match="empty"):
        ex.extract(model, store, tmp_path / "out" / "empty.zarr", device="cpu")
    assert _no_output(tmp_path / "out", "empty.zarr")


def test_mel_settings_mismatch_leaves_no_store(model, tmp_path):
    store = make_mel_store(tmp_path / "other.zarr", model, n=1, fingerprint="0" * 64)
    (tmp_path / "out").mkdir()
    with pytest.raises(ex.MelStoreError, match="mel_sha256"):
        ex.extract(model, store, tmp_path / "out" / "other.zarr", device="cpu")
    assert _no_output(tmp_path / "out", "other.zarr")


def test_interrupted_run_leaves_the_old_store_untouched(model, mel_store, tmp_path, monkeypatch):
    out = tmp_path / "toy.zarr"
    out.mkdir()
    (out / "marker").write_text("old")
    calls = []
    original = ex.HeadExtractor.__call__

    def interrupted(self, mel):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, mel)

    monkeypatch.setattr(ex.HeadExtractor, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.extract(model, mel_store, out, batch_size=2, device="cpu")
    assert [p.name for p in tmp_path.iterdir()] == ["toy.zarr"]
    assert [p.name for p in out.iterdir()] == ["marker"]


def test_stage_run_from_params_and_param_errors(model, mel_store, tmp_path, monkeypatch):
    (tmp_path / "data" / "mel").mkdir(parents=True)
    import shutil

    shutil.copytree(mel_store, tmp_path / "data" / "mel" / "toy.zarr")
    monkeypatch.setattr(ex, "load_model", lambda checkpoint, variant=None: model)
    params = {"datasets": ["folder"], "model": {"checkpoint": "random", "variant": "tiny"},
              "extract": {"batch_size": 5, "device": "cpu", "regimes": ["post"]}}
    out = ex.run(params, "toy", tmp_path)
    g = zarr.open_group(out, mode="r")
    assert out == tmp_path / "data" / "heads" / "toy.zarr"
    assert g.attrs["params"]["extract"] == {"batch_size": 5, "device": "cpu", "regimes": ["post"]}
    assert g.attrs["params"]["model"] == {"checkpoint": "random", "variant": "tiny"}
    assert "heads/post/stage3" in g and "heads/pre" not in g

    def with_(key, value):
        p = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
        section, _, leaf = key.partition(".")
        p[section][leaf] = value
        return p

    for key, value, message in [
        ("extract.batch_size", 0, "extract.batch_size"),
        ("extract.device", "tpu", "extract.device"),
        ("extract.regimes", ["pre", "middle"], "extract.regimes"),
        ("model.checkpoint", str(tmp_path / "missing.pt"), "model.checkpoint"),
    ]:
        with pytest.raises(ParamError, match=message.replace(".", r"\.")):
            checked(ex.run, with_(key, value), "toy", tmp_path)
    with pytest.raises(ex.MelStoreError, match="mel store not found"):
        ex.run(params, "absent", tmp_path)


def test_stage_entry_point_reports_a_missing_mel_store(tmp_path):
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text(
        "datasets: [folder]\nmodel: {checkpoint: random, variant: tiny}\nextract: {batch_size: 4, device: cpu}\n")
    script = Path(__file__).resolve().parents[1] / "stages" / "extract.py"
    proc = subprocess.run([sys.executable, str(script), "folder"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "extract@folder:" in proc.stderr and "data/mel/folder.zarr" in proc.stderr and "not found" in proc.stderr
    assert not (tmp_path / "data" / "heads").exists()
