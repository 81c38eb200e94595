"""`export` and `predict`: a method refitted on every labelled clip of a dataset, written to one
code-free file (safetensors + a JSON header), then applied to audio files. The file's predictions
equal what the refitted estimator gives on the pipeline's own heads store for the same clips, made
by `preprocess` and `extract` from the same files; a file made for other weights is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from residual_audio.adapted.bundle import BundleError, read_bundle
from residual_audio.adapted.export import export
from residual_audio.adapted.predict import predict
from residual_audio.core.params import ParamError
from residual_audio.data.units import read_units
from residual_audio.evaluation.protocol import Split
from residual_audio.methods import FoldData
from tiny_project import CLASSES, text_side

REPO = Path(__file__).resolve().parents[1]
METHODS = ["zeroshot", "linear_probe", "linear", "spectral_out", "linear_adapter", "residual_fine", "residual_full",
           "residual_identity"]


def _params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = ["folder"]
    params["model"]["checkpoint"] = "random"
    params["cv"]["val_fraction"] = 0.25
    for r in params["residual"]["recipes"].values():
        r["max_epochs"] = 2
    params["train"]["max_epochs"] = 2
    params["residual"]["recipes"]["identity"]["lr"] = [0.01]
    params["baselines"]["linear_adapter"]["lr"] = [0.01]
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, model):
    """Twelve noise clips as 16-bit WAV files (quiet and loud), preprocessed and extracted as the stages do."""
    import soundfile as sf

    from residual_audio.data.datasets import Clip
    from residual_audio.models.laion import MelFrontEnd
    from residual_audio.stages.extract import extract
    from residual_audio.stages.preprocess import preprocess
    from residual_audio.evaluation.zeroshot import save_text_side

    root = tmp_path_factory.mktemp("export")
    front = MelFrontEnd.of(model)
    rng = np.random.default_rng(5)
    clips = []
    for i in range(12):
        label = i % 2
        wave = rng.standard_normal(front.audio_rate * 3).astype(np.float32) * (0.3 if label else 0.03)
        path = root / "audio" / CLASSES[label] / f"clip{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, front.audio_rate, subtype="PCM_16")
        clips.append(Clip(f"clip{i:02d}", path, label, CLASSES[label], 0))
    preprocess(clips, CLASSES, front, root / "data/mel/folder.zarr", root / "data/mel/folder.csv", dataset="folder",
               weights="random", progress=False)
    extract(model, root / "data/mel/folder.zarr", root / "data/heads/folder.zarr", batch_size=12, device="cpu")
    save_text_side(root / "data/text/folder.npz", text_side(model))
    return root, [c.path for c in clips]


@pytest.fixture()
def inside(project, monkeypatch):
    monkeypatch.chdir(project[0])
    return project


@pytest.mark.parametrize("method", METHODS)
def test_predict_gives_the_refitted_estimators_logits(inside, method):
    root, files = inside
    path, est = export(_params(), "folder", method)
    assert path == Path("exports") / f"folder-{method}.safetensors" and path.is_file()
    bundle = read_bundle(path)
    meta = bundle.meta
    assert meta["checkpoint"] == "random" and meta["family"] == "laion" and meta["weights"] == "random"
    refit = meta["refit"]
    counted = sum(refit["fitting_clips"].values()) + sum(refit["validation_clips"].values())
    assert counted == 12  # every labelled clip, some of them as the validation draw where the method needs one
    store = read_units(root / "data/heads/folder.zarr")
    idx = np.arange(store.n)
    empty = np.array([], np.int64)
    reference = est.logits(FoldData(store, est_text(root), Split("all", empty, empty, idx)), idx)
    classes, logits = predict(path, files, "random", batch_size=5)
    assert classes == CLASSES
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)


def est_text(root):
    from residual_audio.evaluation.zeroshot import load_text_side

    return load_text_side(root / "data/text/folder.npz")


def test_the_file_holds_no_code_and_other_weights_are_refused(inside, official_checkpoint):
    root, files = inside
    path, _ = export(_params(), "folder", "residual_fine")
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:  # plain arrays and one JSON header
        header = json.loads(f.metadata()["residual_audio"])
        assert all(f.get_tensor(k).dtype.kind in "biuf" for k in f.keys())
    assert header["method"] == "residual_fine" and header["hyper"]["recipe"]["variance"] == 0.9
    # the same network, but a checkpoint file whose sha256 is not the one the units came from
    with pytest.raises(BundleError, match=r"folder-residual_fine.safetensors: made for the weights random"):
        predict(path, files[:1], str(official_checkpoint))


def test_unusable_files_and_methods_are_refused_in_one_line(inside, tmp_path):
    with pytest.raises(ParamError, match="tip_adapter cannot be exported"):
        export(_params(), "folder", "tip_adapter")
    with pytest.raises(ParamError, match="unknown method 'nope'"):
        export(_params(), "folder", "nope")
    path, _ = export(_params(), "folder", "zeroshot")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BundleError, match="cut.safetensors: not a readable safetensors file"):
        read_bundle(cut)
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(BundleError, match="foreign.safetensors: no residual_audio header"):
        read_bundle(foreign)


def test_the_command_line_exports_and_predicts(inside):
    root, files = inside
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(_params()))
    run = lambda *a: subprocess.run([sys.executable, "-m", "residual_audio", *a], cwd=root, capture_output=True,  # noqa: E731
                                    text=True, timeout=600)
    done = run("export", "folder", "linear_probe", "-o", "exports/probe.safetensors")
    assert done.returncode == 0, done.stderr
    assert "export: wrote exports/probe.safetensors" in done.stdout
    done = run("predict", "exports/probe.safetensors", *map(str, files[:3]), "-o", "predictions.csv")
    assert done.returncode == 0, done.stderr
    import pandas as pd

    table = pd.read_csv(root / "predictions.csv")
    assert list(table.path) == [str(f) for f in files[:3]]
    assert set(table.label) <= set(CLASSES) and ((table.score > 0) & (table.score <= 1)).all()
    np.testing.assert_allclose(table[[f"p({c})" for c in CLASSES]].sum(1), 1.0, atol=1e-5)
    done = run("predict", "exports/probe.safetensors", str(files[0]), "--checkpoint", "nowhere.pt")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
