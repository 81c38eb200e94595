"""Every result records what it was made with: package versions, Python, device, and the hashes of its
clips and checkpoint, in the results file and beside the metrics."""

from __future__ import annotations

import hashlib
import json
import platform
import sys

import numpy as np
import zarr

from residual_audio.data.synthetic import synthetic_store
from residual_audio.evaluation.zeroshot import save_text_side


def _table_hash(path) -> str:
    """The clip table's hash, recomputed from the store's own arrays (ids, labels, folds), by hand."""
    g = zarr.open_group(str(path), mode="r")
    rows = "".join(f"{c}\t{int(y)}\t{int(f)}\n" for c, y, f in zip(g["clip_id"][:], g["label"][:], g["fold"][:]))
    return hashlib.sha256(rows.encode()).hexdigest()


def test_environment_names_the_versions_in_use():
    import scipy
    import sklearn
    import torch

    from residual_audio.core.environment import environment

    env = environment("cpu", dataset="x")
    assert env["python"] == platform.python_version() == sys.version.split()[0]
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] == torch.__version__
    assert env["packages"]["scipy"] == scipy.__version__ and env["packages"]["scikit-learn"] == sklearn.__version__
    assert env["device"] == "cpu" and env["dataset"] == "x"


def test_results_and_metrics_record_their_environment(tmp_path, monkeypatch):
    from residual_audio.evaluation.results import load_results
    from residual_audio.stages.evaluate import run as evaluate
    from residual_audio.stages.train import train_dataset

    store = tmp_path / "data/heads/syn.zarr"
    text, _ = synthetic_store(store, n_per_class=6, n_classes=3, seed=2)
    save_text_side(tmp_path / "data/text/syn.npz", text)
    monkeypatch.chdir(tmp_path)
    params = {"seed": 0, "cv": {"scheme": "stratified", "k": 2}, "methods": ["zeroshot", "linear_probe"], "live": False}
    train_dataset(params, "syn")
    evaluate(params, "syn")
    env = load_results("data/results/syn/linear_probe.npz")["meta"]["environment"]
    assert env["clips_sha256"] == _table_hash(store)
    assert env["checkpoint_sha256"] == zarr.open_group(str(store), mode="r").attrs["checkpoint_sha256"]
    assert env["device"] == "cpu" and env["family"] == "laion" and env["weights"] == "random"
    beside = json.loads((tmp_path / "plots/alignment/syn/methods/linear_probe.json").read_text())["environment"]
    assert beside == env
    # another labelling of the same clips is another hash
    from residual_audio.core.environment import clips_sha256

    g = zarr.open_group(str(store), mode="r")
    assert clips_sha256(g["clip_id"][:], g["label"][:], g["fold"][:]) == env["clips_sha256"]
    assert clips_sha256(g["clip_id"][:], np.roll(g["label"][:], 1), g["fold"][:]) != env["clips_sha256"]
