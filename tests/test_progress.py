"""Progress in a log: under `dvc repro` stderr is no terminal, and a long stage still says where it
is: a dated line per method × fold (train) or shot × seed (fewshot), and otherwise at most one
line every `logs.INTERVAL` seconds, each with done/total and the time left."""

from __future__ import annotations

import re

import yaml
from conftest import REPO

from residual_audio.core import logs
from residual_audio.data.synthetic import synthetic_store
from residual_audio.evaluation.zeroshot import save_text_side

DATED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def test_the_train_stage_names_every_method_and_fold_as_it_goes(tmp_path, monkeypatch, capsys):
    from residual_audio.stages.train import train_dataset

    text, _ = synthetic_store(tmp_path / "data/heads/synthetic.zarr", n_per_class=6, n_classes=3, n_folds=3, seed=0)
    save_text_side(tmp_path / "data/text/synthetic.npz", text)
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = ["zeroshot", "linear_probe", "residual_coarse"]
    params.update(methods=methods, live=False)
    params["cv"]["val_fraction"] = 0.4
    params["residual"]["recipes"]["coarse"]["max_epochs"] = 1
    train_dataset(params, "synthetic")
    lines = [line for line in capsys.readouterr().err.splitlines() if "train synthetic:" in line]
    assert lines and all(DATED.match(line) for line in lines) and not any("\r" in line for line in lines)
    for i, fold in enumerate(["fold1", "fold2", "fold3"]):
        for j, method in enumerate(methods):
            step = f"{i * len(methods) + j}/9 fits"
            assert any(step in line and f"{fold} ({i + 1}/3): {method}" in line for line in lines), (step, lines)
    assert lines[-1].split(" ", 2)[2].startswith("train synthetic: 9/9 fits")
    assert any("left)" in line for line in lines[1:-1])


def test_a_log_gets_at_most_one_line_per_interval_and_a_last_one(monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(logs, "_last", [0.0])
    bar = logs.LogLine(total=100, desc="extract x", unit="clips")
    for _ in range(100):
        clock[0] += 0.5  # 50 s in all: lines at most every 10 s
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert 5 <= len(lines) <= 7 and lines[-1].endswith("extract x: 100/100 clips (50s)")
    assert "about" in lines[1] and "left" in lines[1]
