"""The alignment stages under DVC, on a tiny synthetic store (no model forward needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from residual_audio.params import ParamError
from residual_audio.synthetic import synthetic_store
from residual_audio.zeroshot import save_text_side

REPO = Path(__file__).resolve().parents[1]
STAGES = ("bases", "baselines", "train", "evaluate", "ablation")


def _project(tmp_path: Path) -> Path:
    """A git + DVC project with the alignment stages, a 4-clips-per-class store and its text side."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "residual_audio", root / "residual_audio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in STAGES}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(dataset="synthetic")
    params["cv"].update(scheme="stratified", k=2)
    params["train"].update(max_epochs=3)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    text, _ = synthetic_store(root / "data/heads/synthetic.zarr", n_per_class=4, n_classes=5)
    save_text_side(root / "data/text/synthetic.npz", text)
    # direct mode reads neither, but `train` depends on them for inject mode
    (root / "data/mel/synthetic.zarr").mkdir(parents=True)
    (root / "data/mel/synthetic.zarr/README").write_text("inject mode only\n")
    (root / "data/models").mkdir(parents=True)
    (root / "data/models/manifest.json").write_text('{"weights": "random"}\n')
    # the geometry stage's per-head table, whose Fisher scores the ablation correlates with
    from residual_audio.synthetic import head_rows

    rows = [dict(dataset="synthetic", regime="pre", stage=s, block=b, head=h, fisher=float((7 * i) % 11))
            for i, (s, b, h) in enumerate(head_rows())]
    (root / "plots/geometry").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "plots/geometry/heads.csv", index=False)
    return root


def _run(root: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(root))
    out = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_dvc_experiments_and_metrics_diff(tmp_path):
    root = _project(tmp_path)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"], ["git", "config", "user.name", "t"],
                [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(root, *cmd)
    dvc = [sys.executable, "-m", "dvc"]
    _run(root, *dvc, "repro")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "baseline run")
    metrics = {m: json.loads((root / "metrics" / f"{m}.json").read_text()) for m in ("zeroshot", "residual", "linear_probe", "linear_adapter")}
    for m in metrics.values():
        assert len(m["accuracy"]["folds"]) == 2 and m["weights"] == "random" and 0 <= m["top5"]["mean"] <= 1
    assert metrics["residual"]["params"] > 0 and metrics["zeroshot"]["params"] == 0
    assert (root / "plots/alignment/confusion/residual.csv").read_text().startswith("actual,predicted")
    ablation = json.loads((root / "metrics/ablation.json").read_text())
    assert set(ablation["synthetic"]["fisher"]) == {"pre"}  # read the geometry table it depends on

    _run(root, *dvc, "exp", "run", "-S", "inject_layers=[0]")
    _run(root, *dvc, "exp", "run", "-S", "residual.mode=direct", "-S", "train.max_epochs=0")
    zero = json.loads((root / "metrics/residual.json").read_text())
    assert zero["accuracy"]["folds"] == metrics["zeroshot"]["accuracy"]["folds"]  # 0 epochs: exactly zero-shot
    diff = json.loads(_run(root, *dvc, "metrics", "diff", "--json"))
    changed = {k for f in diff.values() for k in f}
    assert "accuracy.mean" in changed or any("accuracy" in k for k in changed)

    # a bad value fails with the key named and leaves the outputs as they were
    before = (root / "metrics/residual.json").read_text()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["inject_layers"] = [7]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(root))
    out = subprocess.run([*dvc, "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "inject_layers" in out.stdout + out.stderr
    assert (root / "metrics/residual.json").read_text() == before


def test_text_stage_needs_a_tokenizer(tmp_path, monkeypatch):
    from residual_audio.experiment import text_stage

    monkeypatch.chdir(tmp_path)
    params = {"dataset": "x", "model": {"checkpoint": "random", "variant": "tiny", "tokenizer": None}}
    with pytest.raises(ParamError, match="model.tokenizer"):
        text_stage(params)
    assert not (tmp_path / "data").exists()


def test_inject_layers_are_checked_in_either_mode(tmp_path, monkeypatch):
    from residual_audio.experiment import train_stage

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for mode in ("direct", "inject"):
        params["residual"]["mode"] = mode
        params["inject_layers"] = []
        with pytest.raises(ParamError, match="inject_layers"):
            train_stage(params)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_dvc_experiment_in_inject_mode(tmp_path, model):
    """`dvc exp run -S residual.mode=inject -S inject_layers=[3]` on a real 12-clip store of the random model."""
    from tiny_project import write_project_data

    root = tmp_path / "project"
    shutil.copytree(REPO / "residual_audio", root / "residual_audio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in ("bases", "baselines", "train", "evaluate")}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(dataset="toy")
    params["model"].update(checkpoint="random", variant="tiny")
    params["cv"].update(scheme="stratified", k=2, val_fraction=0.34)
    params["train"].update(max_epochs=2, batch_size=4, device="cpu")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_project_data(root, model, "toy", n=12)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"], ["git", "config", "user.name", "t"],
                [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(root, *cmd)
    _run(root, sys.executable, "-m", "dvc", "exp", "run", "-S", "residual.mode=inject", "-S", "inject_layers=[3]")
    metrics = json.loads((root / "metrics/residual.json").read_text())
    assert metrics["weights"] == "random" and len(metrics["accuracy"]["folds"]) == 2
    import numpy as np

    with np.load(root / "data/results/residual/toy.npz") as z:
        meta = json.loads(str(z["meta"]))
        assert meta["mode"] == "inject" and meta["inject_layers"] == [3]
        assert metrics["params"] == max(len(z[f"residual/{f}/lam"]) for f in z["folds"]) > 0
