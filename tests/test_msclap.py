"""MS-CLAP 2023 against msclap's own model code: a seeded random CLAP built with msclap's classes,
saved in its official file format (`{'model': state_dict}`, about 640 MB, once for this module),
then loaded by the pipeline. The audio and text embeddings, the zero-shot scale and the front end
must be msclap's; the decomposition must be exact; the stages must run on the file."""

from __future__ import annotations

import math
import os

import msclap_reference as reference_code
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import zarr
from conftest import checked

from residual_audio.core.params import ParamError
from residual_audio.models import checkpoints, msclap
from residual_audio.models.decompose import DirectDecomposition, relative_error
from residual_audio.models.hooked import HookedHTSAT
from residual_audio.models.laion import Architecture

pytestmark = pytest.mark.model
RATE = 44100


def _rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a, dtype=np.float32)), torch.as_tensor(np.asarray(b, dtype=np.float32))
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


@pytest.fixture(scope="module")
def reference():
    reference_code.package_dir()  # skips when msclap is not installed
    return reference_code.build_reference(seed=3)


@pytest.fixture(scope="module")
def official_file(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("msclap") / msclap.OFFICIAL_FILE
    reference_code.save_official(reference, path)
    yield path
    path.unlink()  # the suite's temporary-disk budget: gone once this module is done


@pytest.fixture(scope="module")
def ours(official_file):
    return checkpoints.load_model(official_file)


@pytest.fixture(scope="module")
def clips():
    """Three 7 s clips at 44.1 kHz: tones plus noise."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(msclap.AUDIO_CFG["clip_samples"], dtype=torch.float64) / RATE
    tones = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (220.0, 880.0, 3000.0)]).float()
    return tones + 0.05 * torch.randn(tones.shape, generator=gen)


@pytest.fixture(scope="module")
def gpt2(shared_data):
    return msclap.load_tokenizer(shared_data / "gpt2")


def test_the_official_file_is_told_by_its_content(official_file, ours, tmp_path):
    """No param says which family a file is: the content does, whatever the file is called."""
    renamed = tmp_path / "weights.pt"
    os.link(official_file, renamed)
    assert checkpoints.family_of(official_file) == checkpoints.family_of(renamed) == "msclap"
    assert ours.family == "msclap" and ours.weights == "pretrained" and not ours.training
    arch = Architecture.of(ours)
    assert (arch.depths, arch.heads, arch.head_dim, arch.n_heads) == ((2, 2, 6, 2), (4, 8, 16, 32), 24, 184)
    assert checkpoints.joint_dim(ours) == 1024
    with pytest.raises(checkpoints.CheckpointError, match="HTSAT-tiny weights, but HTSAT-base"):
        checkpoints.load_model(official_file, "base")


def test_audio_embeddings_equal_msclaps_audio_encoder(reference, ours, official_file, clips):
    """msclap's `audio_encoder` (waveform → its own STFT, filter bank, HTSAT, projection) against our front
    end plus hooked forward."""
    with torch.no_grad():
        theirs = F.normalize(reference.audio_encoder(clips)[0], dim=-1)
        htsat = reference.audio_encoder.base.htsat
        their_mel = htsat.logmel_extractor(htsat.spectrogram_extractor(clips))[:, 0]
        front = checkpoints.front_end(official_file)
        mel = front(clips)
        out = HookedHTSAT(ours)(mel)
    assert mel.shape == (3, 965, 64)
    assert torch.equal(mel, their_mel)  # the same modules and weights: bit for bit
    assert out["audio_embed"].shape == (3, 1024)
    assert _rel(out["audio_embed"], theirs) <= 1e-5
    assert front.fingerprint() == checkpoints.mel_fingerprint(ours)


def test_the_filter_bank_is_what_msclaps_code_builds_not_its_yaml(official_file):
    """HTSATWrapper builds HTSAT from msclap/models/config.py: the mel bank is made for 32 kHz, 50–14000 Hz
    (librosa's, as torchlibrosa builds it), though the audio is at 44.1 kHz and config_2023.yml says 50–8000 Hz."""
    import librosa

    config = reference_code.config_2023()
    assert (config["sampling_rate"], config["fmin"], config["fmax"], config["duration"]) == (44100, 50, 8000, 7)
    bank = checkpoints.front_end(official_file).logmel_extractor.melW.detach().numpy()
    code = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000).T
    yaml = librosa.filters.mel(sr=44100, n_fft=1024, n_mels=64, fmin=50, fmax=8000).T
    np.testing.assert_allclose(bank, code, rtol=0, atol=1e-7)
    assert np.abs(bank - yaml).max() > 0.01
    settings = checkpoints.front_end(official_file).settings()
    assert (settings["audio_rate"], settings["clip_samples"], settings["fill"], settings["quantize"]) == (
        44100, 7 * 44100, "repeat", False)


def test_text_embeddings_equal_msclaps_caption_encoder(reference, ours):
    """GPT-2, last-token pooling at msclap's index and the caption projection, on padded token ids."""
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 50000, (3, msclap.CONTEXT_LENGTH), generator=gen)
    mask = torch.ones_like(ids)
    for row, n in ((0, 77), (1, 9), (2, 30)):  # ' <|endoftext|>' then '!' padding, as msclap's input is
        ids[row, n - 1] = msclap.EOT_ID
        ids[row, n:], mask[row, n:] = msclap.PAD_ID, 0
    tokens = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        theirs = F.normalize(reference.caption_encoder(tokens), dim=-1)
    assert _rel(checkpoints.text_embedding(ours, tokens), theirs) <= 1e-5


@pytest.mark.shared
def test_text_handling_and_zero_shot_are_msclaps(reference, ours, gpt2, clips):
    """msclap's `CLAPWrapper` itself (loaded by path): its tokens, class vectors and similarity against
    ours, with msclap's default prompt and `logit_scale.exp()`."""
    wrapper = reference_code.wrapper(reference, gpt2)
    labels = ["dog", "chirping_birds", "door wood knock"]
    prompts = [f"this is a sound of {label.replace('_', ' ')}" for label in labels]
    assert torch.equal(msclap.tokenize(gpt2, prompts)["input_ids"], wrapper.preprocess_text(prompts)["input_ids"])
    with torch.no_grad():
        their_text = wrapper.get_text_embeddings(prompts)
        their_audio = wrapper._get_audio_embeddings(clips[:, None])
        their_logits = wrapper.compute_similarity(their_audio, their_text)
    classes = checkpoints.class_embeddings(ours, gpt2, labels)  # the family's prompt by default
    assert _rel(classes, F.normalize(their_text, dim=-1)) <= 1e-5
    assert checkpoints.logit_scale(ours) == float(reference.logit_scale.exp())
    audio = HookedHTSAT(ours)(msclap.front_end()(clips))["audio_embed"]
    ours_logits = checkpoints.logit_scale(ours) * audio @ classes.T
    torch.testing.assert_close(ours_logits, their_logits, rtol=1e-5, atol=1e-4)


def test_the_decomposition_is_exact(ours, clips):
    """Units + constant = the pooled embedding, and through the projection's first (linear) layer."""
    with torch.no_grad():
        mel = msclap.front_end()(clips)
        out = DirectDecomposition(ours)(mel)
        assert (relative_error(out["units"], out["const"], out["embedding"]) <= 1e-4).all()
        first = ours.audio_projection.linear1
        pre = first(out["units"]).sum(1) + first(out["const"])
        assert _rel(pre, first(out["embedding"])) <= 1e-4
    assert out["units"].shape[1] == 1 + 184 + 12  # patch embedding, heads, MLPs


@pytest.mark.shared
def test_the_stages_store_msclaps_embeddings(reference, official_file, ours, gpt2, shared_data, tmp_path, monkeypatch):
    """model → download → preprocess → extract → text on the official file, offline: the stored audio_embed
    is msclap's `get_audio_embeddings` of the same files (its random crop drawn with a known seed and
    given to us as `preprocess.crop`), the stored class vectors its `get_text_embeddings`."""
    import random

    from residual_audio.evaluation.zeroshot import load_text_side
    from residual_audio.stages import download, extract, model, preprocess, text

    root = tmp_path / "clips"
    t = np.arange(int(3.2 * RATE)) / RATE
    waves = {"dog": 0.3 * np.sin(2 * np.pi * 440 * t), "rain": 0.1 * np.random.default_rng(0).standard_normal(9 * RATE)}
    files = []
    for name, wave in waves.items():  # a clip shorter than 7 s (tiled and cut) and a longer one (cropped)
        (root / name).mkdir(parents=True)
        files.append(root / name / "clip.wav")
        sf.write(files[-1], wave.astype(np.float32), RATE, subtype="FLOAT")
    random.seed(11)
    crop = random.randrange(2 * RATE)  # the start msclap's load_audio_into_tensor draws for the 9 s clip
    monkeypatch.chdir(tmp_path)
    params = {"datasets": ["folder"], "data": {"folder": {"source": str(root)}},
              "model": {"checkpoint": str(official_file), "tokenizer": str(shared_data / "gpt2")},
              "preprocess": {"crop": crop}, "extract": {"batch_size": 2}}
    fetched = []

    def from_shared(url, dest, sha256=None, timeout=60):  # the hub, offline: its gpt2 files are ../shared's
        fetched.append(url)
        dest.write_bytes((shared_data / "gpt2" / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr("residual_audio.data.fetch.download_url", from_shared)
    checked(model.run, {**params, "model": {"checkpoint": str(official_file), "tokenizer": "auto"}})
    assert fetched == [msclap.TOKENIZER_BASE_URL + "vocab.json", msclap.TOKENIZER_BASE_URL + "merges.txt"]
    checked(model.run, params)  # the same files from a local folder
    checked(download.run, params, "folder", dataset="folder")
    checked(preprocess.run, params, "folder", dataset="folder")
    checked(extract.run, params, "folder", dataset="folder")
    checked(text.run, params, "folder", dataset="folder")
    mel = zarr.open_group("data/mel/folder.zarr", mode="r")
    assert mel.attrs["family"] == "msclap" and mel.attrs["audio"]["audio_rate"] == RATE
    store = zarr.open_group("data/heads/folder.zarr", mode="r")
    assert store.attrs["family"] == "msclap" and len(store.attrs["heads"]) == 184
    # `pre` heads where LAION's are taken: each head's hook_z, averaged over tokens
    with torch.no_grad():
        _, cache = HookedHTSAT(ours).run_with_cache(torch.from_numpy(mel["mel"][:]), names=["layers.2.blocks.5.attn.hook_z"])
    first = sum(d * h for d, h in zip((2, 2, 5), (4, 8, 16)))  # heads before layers.2.blocks.5
    np.testing.assert_allclose(store["heads/pre"][:, first:first + 16], cache["layers.2.blocks.5.attn.hook_z"].mean(1),
                               rtol=1e-5, atol=1e-6)
    wrapper = reference_code.wrapper(reference, gpt2)
    random.seed(11)
    with torch.no_grad():
        audio = F.normalize(wrapper.get_audio_embeddings([str(f) for f in files], resample=True), dim=-1)
        classes = F.normalize(wrapper.get_text_embeddings(["this is a sound of dog", "this is a sound of rain"]), dim=-1)
    assert _rel(store["audio_embed"][:], audio) <= 1e-5
    side = load_text_side("data/text/folder.npz")
    assert side.templates == [msclap.PROMPT] and side.projection["kind"] == "msclap"
    assert _rel(side.class_embeddings, classes) <= 1e-5
    assert side.logit_scale == float(reference.logit_scale.exp())


def test_foreign_and_broken_msclap_files_are_refused_in_one_line(ours, tmp_path):
    """The 2022 model (CNN14 + BERT) and clapcap are refused saying why; a key the model lacks (other than
    GPT-2's causal-mask buffers, which transformers 4 saved), a missing key or a bad shape, naming it."""
    own = {msclap.official_name(k): v for k, v in ours.state_dict().items()}
    cnn = {"audio_encoder.base.conv_block1.conv1.weight": torch.zeros(64, 1, 3, 3),
           "caption_encoder.base.encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)}
    for state, match in ((cnn, "CNN14 audio encoder .* no attention heads"),
                         ({"clap.audio_encoder.base.htsat.norm.weight": torch.zeros(2)}, "captioning model")):
        path = tmp_path / "foreign.pth"
        torch.save({"model": state}, path)
        with pytest.raises(checkpoints.CheckpointError, match=match) as info:
            checkpoints.load_model(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    buffers = {f"caption_encoder.base.h.{i}.attn.{b}": torch.zeros(1) for i in range(12) for b in ("bias", "masked_bias")}
    loaded = msclap.load_state(msclap.state_of({"model": {**own, **buffers}}, "f.pth"), "f.pth")
    assert loaded.weights == "pretrained"
    cases = (({**own, "caption_encoder.base.h.0.attn.extra": torch.zeros(1)}, "unexpected 'caption_encoder.base.h.0.attn.extra'"),
             ({k: v for k, v in own.items() if k != "audio_encoder.projection.linear2.weight"},
              "missing 'audio_encoder.projection.linear2.weight'"),
             ({**own, "logit_scale": torch.zeros(2)}, r"logit_scale has shape \(2,\), expected \(\)"),
             ({**own, "caption_encoder.projection.layer_norm.bias": torch.full((1024,), float("nan"))}, "NaN or inf"))
    for state, match in cases:
        with pytest.raises(checkpoints.CheckpointError, match=match):
            msclap.load_state(msclap.state_of({"model": state}, "f.pth"), "f.pth")


def test_the_official_names_stand_for_the_hub_and_the_2022_model_is_refused(tmp_path):
    from residual_audio.data.fetch import OFFICIAL_CHECKPOINTS
    from residual_audio.stages import model

    assert OFFICIAL_CHECKPOINTS["CLAP_weights_2023.pth"] == (
        "https://huggingface.co/microsoft/msclap/resolve/main/CLAP_weights_2023.pth")
    assert checkpoints.default_tokenizer("msclap") == "https://huggingface.co/gpt2/resolve/main/"
    with pytest.raises(ParamError, match="CLAP_weights_2022.pth: MS-CLAP 2022 has a CNN14 audio encoder") as info:
        checked(model.run, {"model": {"checkpoint": "CLAP_weights_2022.pth"}}, tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data").exists()


@pytest.mark.shared
def test_the_gpt2_tokenizer_is_built_from_files_and_checked(shared_data, tmp_path):
    tok = msclap.load_tokenizer(shared_data / "gpt2")
    assert len(tok) == 50257 and tok.pad_token == "!" and tok.pad_token_id == 0
    ids = msclap.tokenize(tok, ["this is a sound of dog"])["input_ids"][0]
    assert ids[:8].tolist() == [5661, 318, 257, 2128, 286, 3290, 220, 50256] and bool((ids[8:] == 0).all())
    (tmp_path / "vocab.json").write_bytes((shared_data / "roberta-base" / "vocab.json").read_bytes())
    (tmp_path / "merges.txt").write_bytes((shared_data / "roberta-base" / "merges.txt").read_bytes())
    with pytest.raises(checkpoints.TokenizerError, match="expected 50257 .GPT-2."):
        msclap.load_tokenizer(tmp_path)


@pytest.mark.shared
@pytest.mark.slow
def test_every_stage_runs_on_an_msclap_file(official_file, shared_data, tmp_path):
    """The README's offline example with `model.checkpoint` pointed at the official-format file (and
    the GPT-2 tokenizer files): every stage runs, every default method is trained and evaluated
    (inject mode and prompt learning: the test above), and every output says which model made it."""
    import json

    from example_run import run_offline_example

    from residual_audio.core.params import get, load_params

    run = run_offline_example(tmp_path, shared_data / "gpt2", checkpoint=str(official_file), cache_type="hardlink")
    work = run.work
    assert json.loads((work / "data/models/manifest.json").read_text())["family"] == "msclap"
    assert zarr.open_group(work / "data/heads/esc50.zarr", mode="r").attrs["family"] == "msclap"
    methods = get(load_params(work / "params.yaml"), "methods")
    for method in methods:
        result = json.loads((work / f"metrics/esc50/accuracy/{method}.json").read_text())
        assert result["weights"] == "pretrained" and 0 <= result["accuracy"] <= 1, method
    for name in ("fewshot.json", "ablation.json"):
        assert (work / "metrics/esc50" / name).is_file()
    assert (work / "metrics/geometry.json").is_file() and (work / "metrics/comparison.md").is_file()
    status = run.sh(". .venv/bin/activate && dvc status")
    assert "up to date" in status.lower(), status


@pytest.mark.shared
def test_inject_mode_and_prompt_learning_train_on_msclap(ours, gpt2, shared_data, tmp_path, monkeypatch):
    """The two methods that run the model inside training: ResiDual in the forward pass (inject mode,
    through MS-CLAP's projection) and CoOp prompt learning (through GPT-2 and the caption projection)."""
    import shutil

    import yaml
    from tiny_project import CLASSES, write_project_data

    from residual_audio.evaluation.results import load_results
    from residual_audio.evaluation.zeroshot import build_text_side, save_text_side
    from residual_audio.stages import common
    from residual_audio.stages.train import run as train_stage

    write_project_data(tmp_path, ours, dataset="folder", n=8)
    save_text_side(tmp_path / "data/text/folder.npz", build_text_side(ours, gpt2, CLASSES))
    shutil.copytree(shared_data / "gpt2", tmp_path / "data/models/tokenizer")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "load_model", lambda checkpoint, variant=None: ours)  # loaded once for the module
    params = yaml.safe_load((reference_code.REPO / "params.yaml").read_text())
    params.update(datasets=["folder"], inject_layers=[3], methods=["zeroshot", "residual_inject", "prompt_learning"],
                  live=False)
    params["cv"].update(scheme="stratified", k=2, val_fraction=0.34)
    params["residual"]["inject"].update(recipe="identity", micro_batch=4)
    params["residual"]["recipes"]["identity"].update(max_epochs=0, batch_size=4)
    params["prompt_learning"].update(epochs=1)
    params["train"].update(device="cpu")
    checked(train_stage, params, "folder", dataset="folder")
    zeroshot = load_results("data/results/folder/zeroshot.npz")["logits"]
    inject = load_results("data/results/folder/residual_inject.npz")
    # untrained, ResiDual inside the forward is the zero-shot classifier, up to float rounding
    np.testing.assert_allclose(inject["logits"], zeroshot, atol=1e-4, rtol=1e-4)
    prompts = load_results("data/results/folder/prompt_learning.npz")
    assert list(prompts["params"]) == [5 * 768, 5 * 768]  # "this is a sound of": five GPT-2 tokens
    assert np.isfinite(prompts["logits"]).all()


def test_laions_file_api_is_refused_for_msclaps_front_end(tmp_path):
    """`preprocess.front_end: laion_api` loads audio at LAION's 48 kHz and 10 s: refused, naming the key."""
    from residual_audio.data import datasets
    from residual_audio.stages import preprocess

    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "x.wav", np.full(RATE, 0.1, np.float32), RATE)
    clips, classes = datasets.list_clips("folder", tmp_path)
    with pytest.raises(ParamError, match="'preprocess.front_end' is laion_api.*44100 Hz"):
        preprocess.preprocess(clips, classes, msclap.front_end(), tmp_path / "m.zarr", tmp_path / "m.csv",
                              dataset="folder", weights="random", front_end="laion_api", progress=False)
    assert not (tmp_path / "m.zarr").exists()


def test_tokenizer_auto_follows_the_checkpoints_family(tmp_path, monkeypatch):
    """`model.tokenizer: auto` fetches the family's own files, told once the checkpoint is placed: switching
    from LAION's random weights to an MS-CLAP file fetches GPT-2's files, not the earlier roberta ones."""
    from residual_audio.data import fetch

    fetched = []

    def hub(url, dest, sha256=None, timeout=60):
        fetched.append(url)
        dest.write_text('{"x": 0}' if url.endswith(".json") else "#version: 0.2\n")

    monkeypatch.setattr(fetch, "download_url", hub)
    out = tmp_path / "models"
    laion = fetch.fetch_model("random", "auto", out)
    assert laion["family"] == "laion" and fetched == [f"https://huggingface.co/roberta-base/resolve/main/{n}"
                                                      for n in ("vocab.json", "merges.txt")]
    assert fetch.fetch_model("random", "auto", out) == laion  # unchanged: up to date, nothing fetched
    assert len(fetched) == 2
    small = tmp_path / "ms.pth"  # msclap's format (the model stage reads and checks it, loads nothing)
    torch.save({"model": {"audio_encoder.base.htsat.norm.weight": torch.ones(4)}}, small)
    ms = fetch.fetch_model(str(small), "auto", out)
    assert ms["family"] == "msclap" and ms["tokenizer"]["request"]["source"] == msclap.TOKENIZER_BASE_URL
    assert fetched[2:] == [msclap.TOKENIZER_BASE_URL + n for n in ("vocab.json", "merges.txt")]
