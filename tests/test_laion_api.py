"""`preprocess.front_end: laion_api`: the stored audio_embed equals LAION's own
`CLAP_Module.get_audio_embedding_from_filelist` on the same files and weights."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import zarr

from residual_audio.data import audio, datasets
from residual_audio.models import checkpoints
from residual_audio.models import laion as clap
from residual_audio.stages import extract, preprocess
from conftest import checked


@pytest.fixture(scope="module")
def checkpoint(official_checkpoint):
    return official_checkpoint


@pytest.fixture(scope="module")
def laion_api(checkpoint):
    """LAION's CLAP_Module built offline (text tower from a config, no tokenizer download),
    holding the checkpoint's weights."""
    import laion_clap
    from laion_clap import hook

    class NoTokenizer:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return None

    _, clap_model = clap.import_laion_clap()
    original = hook.RobertaTokenizer
    hook.RobertaTokenizer = NoTokenizer
    try:
        with clap._roberta_from_config(clap_model):
            api = laion_clap.CLAP_Module(enable_fusion=False, device="cpu", amodel="HTSAT-tiny")
    finally:
        hook.RobertaTokenizer = original
    api.model.load_state_dict(clap.read_checkpoint(checkpoint), strict=True)
    api.eval()
    return api


def _store_embeddings(paths, checkpoint, tmp_path, front_end, crop="start"):
    clips = [datasets.Clip(clip_id=f"{i:02d}", path=p, label=0, label_name="x", fold=0) for i, p in enumerate(paths)]
    front = checkpoints.front_end(checkpoint)
    mel = tmp_path / f"{front_end}.zarr"
    preprocess.preprocess(clips, ["x"], front, mel, tmp_path / f"{front_end}.csv", dataset="folder",
                          weights="pretrained", crop=crop, front_end=front_end, progress=False)
    heads = tmp_path / f"{front_end}-heads.zarr"
    extract.extract(checkpoints.load_model(checkpoint), mel, heads, batch_size=4, device="cpu", regimes=["pre"])
    group = zarr.open_group(mel, mode="r")
    assert group.attrs["front_end"] == front_end
    return zarr.open_group(heads, mode="r")["audio_embed"][:]


def _rel_rows(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def test_generated_clips_match_laions_api(laion_api, checkpoint, tmp_path):
    """Stereo 22.05 kHz (resampled, mixed down), a 48 kHz clip of 7 s (one repeat, then zeros) and
    a 12 s 32 kHz clip, which LAION's API crops at a random offset: given the same offset as
    `preprocess.crop`, the result is the same."""
    rng = np.random.default_rng(4)
    t = np.arange(int(2.3 * 22050)) / 22050
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 330 * t), 0.2 * rng.standard_normal(len(t))], 1)
    sf.write(tmp_path / "stereo.wav", stereo, 22050)
    sf.write(tmp_path / "7s48.wav", 0.2 * rng.standard_normal(7 * 48000), 48000, subtype="PCM_16")
    t = np.arange(12 * 32000) / 32000
    sf.write(tmp_path / "12s32.wav", 0.3 * np.sin(2 * np.pi * 200 * t * (1 + t)) * np.exp(-t / 6), 32000)
    paths = [tmp_path / "stereo.wav", tmp_path / "7s48.wav", tmp_path / "12s32.wav"]
    overflow = len(audio.load_laion_api(paths[2])) - audio.CLIP_SAMPLES
    np.random.seed(11)
    offset = np.random.randint(0, overflow + 1)  # the draw LAION's rand_trunc makes for the one long clip
    assert 0 < offset < overflow
    ours = _store_embeddings(paths, checkpoint, tmp_path, "laion_api", crop=int(offset))
    np.random.seed(11)
    with torch.no_grad():
        theirs = laion_api.get_audio_embedding_from_filelist([str(p) for p in paths])
    assert _rel_rows(ours, theirs).max() <= 1e-5


@pytest.mark.shared
def test_real_clips_match_laions_api_and_exact_differs(laion_api, checkpoint, shared_data, tmp_path):
    paths = sorted((shared_data / "esc50-fold4").rglob("*.wav"))[:3]
    assert len(paths) == 3
    # the case LAION's resampler changes: a 5 s 44.1 kHz clip is 240,001 samples, so no second repeat fits
    x, sr = audio.decode(paths[0])
    assert (sr, len(x)) == (44100, 220500)
    assert len(audio.load_laion_api(paths[0])) == 240001 and len(audio.resample(x, sr)) == 240000
    ours = _store_embeddings(paths, checkpoint, tmp_path, "laion_api")
    with torch.no_grad():
        theirs = laion_api.get_audio_embedding_from_filelist([str(p) for p in paths])
    assert _rel_rows(ours, theirs).max() <= 1e-5
    exact = _store_embeddings(paths, checkpoint, tmp_path, "exact")
    assert _rel_rows(exact, theirs).min() > 1e-3  # the exact front end is a different input


def test_front_end_param_is_validated(tmp_path):
    from residual_audio.core.params import ParamError

    with pytest.raises(ParamError, match="'preprocess.front_end' is 'librosa'; must be one of 'exact', 'laion_api'"):
        checked(preprocess.run, {"datasets": ["esc50"], "preprocess": {"front_end": "librosa"}}, "esc50", tmp_path)
