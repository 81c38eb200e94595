"""The alignment stages under DVC, on a tiny synthetic store (no model forward needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from residual_audio.core.params import ParamError
from residual_audio.evaluation.zeroshot import save_text_side
from conftest import checked

REPO = Path(__file__).resolve().parents[1]
STAGES = ("train", "evaluate", "compare", "ablation")
METHODS = ("zeroshot", "linear_probe", "linear", "spectral_out", "residual_coarse", "residual_fine",
           "residual_fine_unlabelled", "residual_full", "residual_identity", "linear_adapter", "tip_adapter", "tip_adapter_f")


def _project(tmp_path: Path) -> Path:
    """A git + DVC project with the alignment stages, a 4-clips-per-class store and its text side."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "residual_audio", root / "residual_audio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in STAGES}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(datasets=["folder"])
    params["cv"].update(scheme="stratified", k=2)
    params["train"].update(max_epochs=3)
    for recipe in params["residual"]["recipes"].values():
        recipe["max_epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from residual_audio.data.synthetic import synthetic_world, write_store

    arrays, attrs, text, _ = synthetic_world(n_per_class=4, n_classes=5)
    # per-head outputs before the projection, for the ablation's Fisher scores: class-dependent in some heads
    rng = np.random.default_rng(1)
    signal = (np.arange(len(attrs["heads"])) % 7 == 0)[None, :, None] * arrays["label"][:, None, None]
    arrays["heads/pre"] = (rng.standard_normal((len(arrays["label"]), len(attrs["heads"]), 4)) + signal).astype(np.float32)
    write_store(root / "data/heads/folder.zarr", arrays, attrs)
    save_text_side(root / "data/text/folder.npz", text)
    # direct mode reads neither, but `train` depends on them for inject mode
    (root / "data/mel/folder.zarr").mkdir(parents=True)
    (root / "data/mel/folder.zarr/README").write_text("inject mode only\n")
    (root / "data/models").mkdir(parents=True)
    (root / "data/models/manifest.json").write_text('{"weights": "random"}\n')
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
    metrics = {m: json.loads((root / "plots/alignment/folder/methods" / f"{m}.json").read_text()) for m in METHODS}
    headline = json.loads((root / "metrics/folder/alignment.json").read_text())
    assert headline["weights"] == "random" and set(headline) == {"weights", "tuning", "paired_test", "interval", *METHODS}
    assert headline["tuning"] == "published" and "tuning: published" in (root / "metrics/comparison.md").read_text()
    assert all(set(headline[m]) == {"accuracy", "std", "params", "paired"} for m in METHODS)
    # every method against zero-shot and the probe, on the same two folds (a 2-fold Wilcoxon p is 0.5 or 1)
    fine = headline["residual_fine"]["paired"]
    assert set(fine) == {"vs_zeroshot", "vs_linear_probe"} and set(headline["zeroshot"]["paired"]) == {"vs_linear_probe"}
    assert all(v["p"] is None or v["p"] in (0.5, 1.0) for v in fine.values())
    assert "Paired tests, p vs zeroshot / vs linear_probe" in (root / "metrics/comparison.md").read_text()
    lo, hi = fine["vs_zeroshot"]["ci95"]  # and a clip-level bootstrap interval of the accuracy difference
    assert -1 <= lo <= hi <= 1 and "Accuracy minus zero-shot, 95 % interval" in (root / "metrics/comparison.md").read_text()
    for m in metrics.values():
        assert len(m["accuracy"]["folds"]) == 2 and m["weights"] == "random" and 0 <= m["top5"]["mean"] <= 1
    training_free = {"zeroshot", "tip_adapter"}
    assert all(metrics[m]["params"] == 0 for m in training_free)
    assert all(metrics[m]["params"] > 0 for m in METHODS if m not in training_free)
    table = (root / "metrics/comparison.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS)
    recall = pd.read_csv(root / "plots/alignment/folder/recall.csv")
    assert set(recall.method) == set(METHODS) and recall.recall.between(0, 1).all()
    assert (root / "plots/alignment/folder/lambda/residual_fine.png").is_file()
    curves = root / "dvclive/folder/plots/metrics/random-weights/residual_fine"  # DVCLive, per method and fold
    assert sorted(p.name for p in curves.iterdir()) == ["fold0", "fold1"]
    assert (curves / "fold0" / "val_acc.tsv").read_text().startswith("step\tval_acc")
    ablation = json.loads((root / "metrics/folder/ablation.json").read_text())
    heads_rows = json.loads((root / "data/heads/folder.zarr/zarr.json").read_text())["attributes"]["heads"]
    # correlated with each head's Fisher score on the training clips of each fold, per regime of the store
    assert set(ablation["fisher"]) == {"pre", "post"}
    assert all(-1 <= c["spearman"] <= 1 and c["n"] == len(heads_rows) for c in ablation["fisher"].values())

    # inject_layers selects the reweighted stages in direct mode: fewer λ, other logits
    _run(root, *dvc, "exp", "run", "-S", "inject_layers=[0]")
    stage0 = json.loads((root / "plots/alignment/folder/methods/residual_fine.json").read_text())
    assert stage0["params"] < metrics["residual_fine"]["params"]
    diff = json.loads(_run(root, *dvc, "metrics", "diff", "--json"))
    changed = {(Path(f).stem, k) for f, d in diff.items() if "/accuracy/" in f for k in d}
    assert ("residual_fine", "params") in changed
    assert stage0["accuracy"] != metrics["residual_fine"]["accuracy"] or ("residual_fine", "accuracy") in changed
    # the headline table: one row per method, within 120 columns
    shown = subprocess.run([*dvc, "metrics", "show"], cwd=root, capture_output=True, text=True,
                           env=dict(os.environ, COLUMNS="120"), check=True).stdout.splitlines()
    assert max(map(len, shown)) <= 120, shown
    assert all(any(f"metrics/folder/accuracy/{m}.json" in line and "random" in line for line in shown) for m in METHODS)
    # the README's filtered `exp show` of a one-parameter sweep: named rows, within 120 columns
    exp = subprocess.run([*dvc, "exp", "show", "--no-pager", "--drop", ".*", "--keep",
                          "Experiment|inject_layers|.*/residual_fine.json:accuracy"], cwd=root, capture_output=True,
                         text=True, env=dict(os.environ, COLUMNS="120"), check=True).stdout.splitlines()
    assert max(map(len, exp)) <= 120, exp
    header = next(line for line in exp if "Experiment" in line)
    assert "inject_layers" in header and "residual_fine.json:accuracy" in header and "…" not in header, exp
    assert any("workspace" in line for line in exp) and len([line for line in exp if "[" in line and "]" in line]) >= 1

    # identity at 0 epochs is zero-shot
    _run(root, *dvc, "exp", "run", "-S", "inject_layers=[0,1,2,3]", "-S", "residual.recipes.identity.max_epochs=0",
         "-S", "methods=[zeroshot,residual_identity]")  # the two compared: the other ten need not re-train
    zero = json.loads((root / "plots/alignment/folder/methods/residual_identity.json").read_text())
    assert zero["accuracy"]["folds"] == metrics["zeroshot"]["accuracy"]["folds"]

    # a bad value fails with the key named and leaves the outputs as they were
    before = (root / "plots/alignment/folder/methods/residual_identity.json").read_text()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["inject_layers"] = [7]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(root))
    out = subprocess.run([*dvc, "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "inject_layers" in out.stdout + out.stderr
    assert (root / "plots/alignment/folder/methods/residual_identity.json").read_text() == before


def test_text_stage_needs_a_tokenizer(tmp_path, monkeypatch):
    from residual_audio.stages.text import run as text_stage

    monkeypatch.chdir(tmp_path)
    params = {"datasets": ["folder"], "model": {"checkpoint": "random", "variant": "tiny", "tokenizer": None}}
    with pytest.raises(ParamError, match="model.tokenizer"):
        text_stage(params, "folder")
    assert not (tmp_path / "data").exists()


def test_inject_layers_and_methods_are_checked_before_any_work(tmp_path, monkeypatch):
    from residual_audio.stages.train import run as train_stage

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in (("inject_layers", []), ("inject_layers", [0, 0]), ("methods", ["zeroshot", "nope"])):
        bad = {**params, key: value}
        with pytest.raises(ParamError, match=key):
            checked(train_stage, bad, "esc50")
    assert not (tmp_path / "data").exists()


def test_the_paired_test_is_wilcoxons_exact_signed_rank_test():
    """Hand-made cases: five folds all better gives the exact two-sided p = 2/32; differences 1, -2, 3, 4, 5
    (ranks 1..5, the negative one ranked 2) give 2 · #{rank subsets summing to ≤ 2} / 32 = 2 · 3 / 32."""
    from residual_audio.evaluation.results import paired_test

    base = np.array([0.5, 0.6, 0.55, 0.52, 0.58])
    assert paired_test(base + 0.01, base)["p"] == pytest.approx(2 / 32)
    assert paired_test(base + np.array([1, -2, 3, 4, 5]) * 0.01, base)["p"] == pytest.approx(6 / 32)
    same = paired_test(base, base)
    assert same["p"] is None and same["n"] == 5 and same["mean_diff"] == 0.0


def test_paired_bootstrap_against_a_plain_resampling_and_hand_made_cases():
    """The clip-level interval: scipy's paired percentile bootstrap, checked against a plain-numpy resampling of
    the clips (another random stream, so within 0.01) and against cases whose answer is known."""
    from residual_audio.evaluation.results import paired_bootstrap

    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.7).astype(float)
    b = np.where(rng.random(400) < 0.8, a, 1 - a)  # paired: mostly the same clips right
    got = paired_bootstrap(a, b)
    assert got["diff"] == pytest.approx(a.mean() - b.mean()) and got["n"] == 400
    idx = np.random.default_rng(11).integers(0, 400, size=(20000, 400))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    np.testing.assert_allclose(got["ci95"], np.percentile(diffs, [2.5, 97.5]), atol=0.01)
    assert got["ci95"][0] <= got["diff"] <= got["ci95"][1]
    assert paired_bootstrap(a, a)["ci95"] == [0.0, 0.0]  # the same method: no clip differs
    ones, zeros = np.ones(50), np.zeros(50)
    assert paired_bootstrap(ones, zeros)["diff"] == 1.0 and paired_bootstrap(ones, zeros)["ci95"] == pytest.approx([1, 1])
    with pytest.raises(ValueError, match="paired bootstrap"):
        paired_bootstrap(ones, np.ones(49))
