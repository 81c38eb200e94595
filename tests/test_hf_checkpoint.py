"""Hugging Face ClapModel folders: the pipeline's embeddings against transformers' own ClapModel."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import zarr

from residual_audio.core.params import load_params
from residual_audio.data import fetch as download
from residual_audio.data.stores import seal
from residual_audio.models import checkpoints, hf
from residual_audio.models import laion as clap


def _rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def clap_model():
    """A seeded random transformers ClapModel (HTSAT-tiny + RoBERTa defaults) with every bias,
    norm, position table and BatchNorm statistic perturbed, so that no term is left at its identity."""
    from transformers import ClapConfig, ClapModel

    torch.manual_seed(0)
    model = ClapModel(ClapConfig()).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "relative_position_bias_table" in name:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        bn = model.audio_model.audio_encoder.batch_norm
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 2 - 10)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) * 4 + 2)
    return model


@pytest.fixture(scope="module")
def hf_folder(clap_model, tmp_path_factory):
    """The model saved with `save_pretrained` (about 600 MB), removed when this module's tests end.
    Read-only: `_copy` hard-links its weights file."""
    folder = tmp_path_factory.mktemp("hf") / "clap-htsat-unfused"
    clap_model.save_pretrained(folder)
    (folder / "model.safetensors").chmod(0o444)
    yield folder
    shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def loaded(hf_folder):
    return checkpoints.load_model(hf_folder)


WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _small_clapmodel():
    """A valid ClapModel of the HTSAT-tiny family with one block per stage, one head and a one-layer
    text tower (within `hf.BOUNDS`): about 60 MB instead of 600."""
    from transformers import ClapConfig, ClapModel

    torch.manual_seed(2)
    config = ClapConfig(audio_config={"depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1]},
                        text_config={"num_hidden_layers": 1, "num_attention_heads": 1, "hidden_size": 64,
                                     "intermediate_size": 64, "vocab_size": 1000})
    return ClapModel(config).eval()


def _copy(folder: Path, dest: Path) -> Path:
    """A copy of a ClapModel folder whose weights file is a hard link (no second 600 MB): edit its
    config freely, but replace the weights only through `_replace_weights`."""
    shutil.copytree(folder, dest, copy_function=lambda src, dst: (os.link if Path(src).name in WEIGHTS else shutil.copy2)(src, dst))
    return dest


def _replace_weights(folder: Path, state: dict) -> None:
    from safetensors.torch import save_file

    (folder / "model.safetensors").unlink()  # a new file: the shared one stays as it was
    save_file(state, str(folder / "model.safetensors"))


def test_folder_is_detected_by_content_and_reads_its_config(hf_folder, tmp_path):
    assert hf.is_folder(hf_folder)
    assert not hf.is_folder(tmp_path) and not hf.is_folder("random")
    assert hf.weights_file(hf_folder).name == "model.safetensors"
    config = hf.read_config(hf_folder)
    assert config.text_config.layer_norm_eps == 1e-12  # differs from LAION's RoBERTa (1e-5): read from config.json
    assert hf.variant_of(config) == "tiny"


def test_architecture_and_settings_come_from_config(loaded, clap_model):
    arch = clap.Architecture.of(loaded)
    a = clap_model.config.audio_config
    assert arch.depths == tuple(a.depths) and arch.heads == tuple(a.num_attention_heads)
    assert arch.widths[-1] == a.hidden_size and arch.n_heads == 184
    assert loaded.text_branch.config.layer_norm_eps == clap_model.config.text_config.layer_norm_eps
    assert loaded.text_branch.embeddings.LayerNorm.eps == 1e-12
    assert loaded.audio_branch.layers[0].blocks[0].norm1.eps == a.layer_norm_eps
    assert loaded.weights == "pretrained" and loaded.variant == "tiny" and not loaded.training
    assert float(loaded.logit_scale_a) == float(clap_model.logit_scale_a.detach())


def test_pipeline_embeddings_equal_transformers(hf_folder, loaded, clap_model, tmp_path):
    """Generated clips → preprocess → extract on the ClapModel folder: the stored audio_embed equals
    ClapModel.get_audio_features on the stored log-mel."""
    from residual_audio.data import datasets
    from residual_audio.stages import extract, preprocess

    root = tmp_path / "clips"
    t = np.arange(int(3.2 * 44100)) / 44100
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    sf.write(root / "a" / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 3000 * t), 44100)
    rng = np.random.default_rng(0)
    sf.write(root / "b" / "noise.wav", 0.1 * rng.standard_normal(12 * 16000), 16000)
    clips, classes = datasets.list_clips("folder", root)
    front = checkpoints.front_end(hf_folder)
    mel_path, heads_path = tmp_path / "mel.zarr", tmp_path / "heads.zarr"
    preprocess.preprocess(clips, classes, front, mel_path, tmp_path / "mel.csv", dataset="folder",
                          weights="pretrained", progress=False)
    extract.extract(loaded, mel_path, heads_path, batch_size=2, device="cpu", regimes=["pre"])
    mel = torch.from_numpy(zarr.open_group(mel_path, mode="r")["mel"][:])
    store = zarr.open_group(heads_path, mode="r")
    with torch.no_grad():
        # as ClapFeatureExtractor gives them for an unfused model: [B, 1, frames, mels], is_longer [B, 1]
        is_longer = torch.zeros(len(mel), 1, dtype=torch.bool)
        theirs = clap_model.get_audio_features(input_features=mel[:, None], is_longer=is_longer).pooler_output
    assert theirs.shape == (2, 512)
    assert _rel(store["audio_embed"][:], theirs) <= 1e-5
    assert store.attrs["mel_sha256"] == clap.mel_fingerprint(loaded)


def test_text_vectors_equal_transformers(loaded, clap_model):
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 50000, (3, clap.CONTEXT_LENGTH), generator=gen)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    for row, n in ((1, 12), (2, 40)):  # padded prompts, as the tokenizer gives them
        ids[row, n - 1], ids[row, n:], mask[row, n:] = 2, 1, 0
    with torch.no_grad():
        theirs = clap_model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    ours = checkpoints.text_embedding(loaded, {"input_ids": ids, "attention_mask": mask})
    assert _rel(ours, theirs) <= 1e-5


@pytest.mark.shared
def test_class_vectors_from_the_folders_own_tokenizer(hf_folder, loaded, clap_model, shared_data, tmp_path, monkeypatch):
    """The text stage on a ClapModel folder with its own tokenizer files (model.tokenizer: none)."""
    from residual_audio.evaluation.zeroshot import load_text_side
    from residual_audio.stages import text as text_stage_module

    folder = _copy(hf_folder, tmp_path / "data" / "models" / hf.FOLDER)
    for name in hf.TOKENIZER_FILES:
        shutil.copy(shared_data / "roberta-base" / name, folder / name)
    classes = ["dog", "chirping_birds"]
    heads = zarr.open_group(tmp_path / "data" / "heads" / "esc50.zarr", mode="w")
    heads.create_array("label", data=np.array([0, 1], np.int64))
    heads.create_array("fold", data=np.array([1, 2], np.int64))
    heads.attrs.update(classes=classes, heads=[[0, 0, 0]], weights="pretrained")
    seal(heads)
    monkeypatch.chdir(tmp_path)
    text_stage_module.run({"datasets": ["esc50"], "model": {"checkpoint": "hf:laion/clap-htsat-unfused", "variant": "tiny",
                                                            "tokenizer": None}}, "esc50")
    side = load_text_side(tmp_path / "data" / "text" / "esc50.npz")
    tok = clap.load_tokenizer(folder)
    tokens = clap.tokenize(tok, ["This is a sound of dog", "This is a sound of chirping birds"])
    with torch.no_grad():
        theirs = clap_model.get_text_features(**tokens).pooler_output
    assert side.templates == ["This is a sound of {label}"]
    assert _rel(side.class_embeddings, theirs) <= 1e-5
    assert side.logit_scale == pytest.approx(float(clap_model.logit_scale_a.detach().exp()), rel=1e-6)
    assert side.checkpoint_sha256 == download.sha256_file(folder / "model.safetensors")


def test_pytorch_model_bin_loads_weights_only(hf_folder, loaded, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(hf_folder / "config.json", folder)
    # every tensor but the text encoder's (most of the 600 MB): the same loader and mapping on less disk
    state = {k: v for k, v in load_file(str(hf_folder / "model.safetensors")).items() if not k.startswith("text_model.")}
    torch.save(state, folder / "pytorch_model.bin")
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real(*a, **k))
    state = hf.read_state(folder)
    assert calls == [True]
    mapped = hf.to_laion(state)
    reference = hf.to_laion({k: v for k, v in hf.read_state(hf_folder).items() if not k.startswith("text_model.")})
    assert mapped.keys() == reference.keys() and all(torch.equal(mapped[k], reference[k]) for k in mapped)
    assert any(k.startswith("audio_branch.layers.3") for k in mapped)
    own = loaded.state_dict()
    assert all(torch.equal(own[k], v) for k, v in mapped.items())


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(json.dumps(config))


def test_fused_and_foreign_models_are_refused_in_one_line(hf_folder, tmp_path):
    fused = _copy(hf_folder, tmp_path / "fused")
    _edit_config(fused, **{"audio_config.enable_fusion": True})
    with pytest.raises(clap.CheckpointError, match=r"fused.*config.json: enable_fusion is true"):
        checkpoints.load_model(fused)
    with pytest.raises(clap.CheckpointError, match="enable_fusion"):
        checkpoints.front_end(fused)
    bert = _copy(hf_folder, tmp_path / "bert")
    _edit_config(bert, model_type="bert", architectures=["BertModel"])
    with pytest.raises(clap.CheckpointError, match="bert/config.json: model_type 'bert'.*not a transformers ClapModel"):
        checkpoints.load_model(bert)
    gelu = _copy(hf_folder, tmp_path / "swish")
    _edit_config(gelu, **{"audio_config.hidden_act": "swish"})
    with pytest.raises(clap.CheckpointError, match="audio_config.hidden_act is 'swish'"):
        checkpoints.load_model(gelu)
    empty = _copy(hf_folder, tmp_path / "empty")
    (empty / "model.safetensors").unlink()
    with pytest.raises(clap.CheckpointError, match="empty: no model.safetensors or pytorch_model.bin"):
        checkpoints.load_model(empty)


def test_unknown_layout_is_refused_naming_the_key(hf_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    # the audio side only (the text encoder is most of the 600 MB): an unknown key is refused while the
    # keys are mapped, and the first missing key (sorted: audio_branch.* before text_branch.*) is named
    state = {k: v for k, v in load_file(str(hf_folder / "model.safetensors")).items() if not k.startswith("text_model.")}
    extra = _copy(hf_folder, tmp_path / "extra")
    _replace_weights(extra, {**state, "audio_model.audio_encoder.fusion_model.weight": torch.zeros(3)})
    with pytest.raises(clap.CheckpointError, match=r"model.safetensors: unknown ClapModel layout.*fusion_model"):
        checkpoints.load_model(extra)
    short = _copy(hf_folder, tmp_path / "short")
    _replace_weights(short, {k: v for k, v in state.items() if "layers.2.blocks.5.output.dense" not in k})
    with pytest.raises(clap.CheckpointError, match=r"weights do not match.*layers.2.blocks.5.mlp.fc2"):
        checkpoints.load_model(short)


@pytest.mark.slow
def test_config_that_disagrees_with_the_weights_is_refused(hf_folder, tmp_path):
    deeper = _copy(hf_folder, tmp_path / "deeper")
    _edit_config(deeper, **{"audio_config.depths": [2, 2, 8, 2]})
    with pytest.raises(clap.CheckpointError, match=r"missing 'audio_branch.layers.2.blocks.6"):
        checkpoints.load_model(deeper)


def test_download_places_a_local_folder_and_a_hub_repo(hf_folder, tmp_path, monkeypatch):
    """A local folder and `hf:<owner>/<name>` (from a hub mirror at HF_ENDPOINT) give the same files."""
    from residual_audio.models.checkpoints import resolve_checkpoint

    local = download.fetch_model(str(hf_folder), None, tmp_path / "local")
    assert sorted(local["checkpoint"]["files"]) == ["checkpoint/config.json", "checkpoint/model.safetensors"]
    assert clap.checkpoint_from(tmp_path / "local") == tmp_path / "local" / "checkpoint"
    assert resolve_checkpoint("hf:x/y", tmp_path / "local") == str(tmp_path / "local" / "checkpoint")
    again = download.fetch_model(str(hf_folder), None, tmp_path / "local")  # unchanged source: a no-op
    assert again == local

    hub = tmp_path / "hub"
    repo = hub / "laion" / "clap-htsat-unfused" / "resolve" / "main"
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "vocab.json", "merges.txt", "README.md"]
    _small_clapmodel().save_pretrained(repo)  # a download is a copy: a small valid model keeps it within the disk budget
    for name in files:
        if not (repo / name).exists():
            (repo / name).write_bytes(b"{}")
    (hub / "api" / "models" / "laion").mkdir(parents=True)
    (hub / "api" / "models" / "laion" / "clap-htsat-unfused").write_text(
        json.dumps({"siblings": [{"rfilename": n} for n in files]}))
    monkeypatch.setenv("HF_ENDPOINT", hub.as_uri())
    fetched = download.fetch_model("hf:laion/clap-htsat-unfused", None, tmp_path / "models")
    got = sorted(fetched["checkpoint"]["files"])
    assert got == ["checkpoint/config.json", "checkpoint/merges.txt", "checkpoint/model.safetensors", "checkpoint/vocab.json"]
    assert hf.tokenizer_dir(tmp_path / "models" / "checkpoint") is not None
    # the downloaded weights are loaded in full before the folder is placed: NaN weights are refused,
    # naming the repo, and nothing is written
    from safetensors.torch import load_file, save_file

    state = load_file(str(repo / "model.safetensors"))
    state["logit_scale_a"] = torch.tensor(float("nan"))
    save_file(state, str(repo / "model.safetensors"))
    with pytest.raises(clap.CheckpointError, match=r"hf:laion/clap-htsat-unfused/model.safetensors: weight 'logit_scale_a' holds NaN"):
        download.fetch_model("hf:laion/clap-htsat-unfused", None, tmp_path / "nan-out")
    assert not (tmp_path / "nan-out").exists()
    (tmp_path / "not-clap").mkdir()
    with pytest.raises(download.DownloadError, match="not-clap holds no config.json; not a transformers ClapModel"):
        download.fetch_model(str(tmp_path / "not-clap"), None, tmp_path / "bad")
    with pytest.raises(download.DownloadError, match="not a Hugging Face repo id"):
        download.fetch_model("hf:not a repo", None, tmp_path / "bad")
    fused = _copy(hf_folder, tmp_path / "fused")
    _edit_config(fused, **{"audio_config.enable_fusion": True})
    with pytest.raises(clap.CheckpointError, match="enable_fusion"):
        download.fetch_model(str(fused), None, tmp_path / "fused-out")
    assert not (tmp_path / "fused-out").exists()


def test_default_prompt_is_the_familys_own():
    """`zeroshot.templates: auto` (the default) is LAION's ESC-50 prompt for LAION-CLAP and msclap's
    README prompt for MS-CLAP."""
    from residual_audio.models.checkpoints import default_prompt

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert params["zeroshot"]["templates"] == "auto"
    assert default_prompt("laion") == "This is a sound of {label}"
    assert default_prompt("msclap") == "this is a sound of {label}"
