"""The README's commands work as written: every file and entry point they name exists, the
set-up is what CI runs, the packaging declares what requirements.txt pins, and the offline
example runs end to end (on generated ESC-50-layout audio, in a temporary copy of the project)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from example_run import bash_blocks, commands

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESIDUAL_AUDIO_SHARED", REPO.parent / "shared"))


def test_setup_and_test_commands_are_what_ci_runs():
    first = bash_blocks()[0].strip().splitlines()
    assert first == ["python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e . && "
                     ".venv/bin/pip install --no-deps -r requirements-reference.txt",
                     ".venv/bin/python -m pytest -q"]
    ci = (REPO / ".ci" / "run").read_text()
    assert ("python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e . && "
            ".venv/bin/pip install -q --no-deps -r requirements-reference.txt") in ci
    assert ".venv/bin/python -m pytest -q" in ci


MANUAL = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_short_and_points_to_every_page_of_the_manual():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in MANUAL[1:]:
        assert f"docs/{page.name}" in text, f"README does not point to docs/{page.name}"


@pytest.mark.parametrize("page", MANUAL, ids=lambda p: p.name)
def test_every_command_names_files_and_entry_points_that_exist(page):
    for command in commands(page):
        # a command that needs the venv's tools activates it itself (each is pasted into a new shell)
        words = shlex.split(command.replace("&&", " ; "))
        tools = {w for w in words if w in ("dvc", "pytest", "residual-audio")}
        if tools:
            assert command.startswith(". .venv/bin/activate && ") or command.startswith(".venv/bin/"), command
        for word in words:
            for path in re.findall(r"(?:stages|scripts|bench|tests)/[\w./-]+\.(?:py|sh)", word):
                assert (REPO / path).is_file(), f"README names {path}, which does not exist"
            if word.startswith("stages/") or word.startswith("bench/"):
                assert (REPO / word).is_file(), word
        for flag, value in zip(words, words[1:]):
            if flag == "-S":
                key = value.split("=", 1)[0].strip("'\"")
                from residual_audio.core.params import load_params

                root = key.split(".")[0]
                assert root in load_params(REPO / "params.yaml"), f"README sets unknown param {key}"


def test_stage_scripts_print_help_and_touch_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for name in ("train", "download", "geometry"):
        done = subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py"), "--help"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"python stages/{name}.py" in done.stdout and "params.yaml keys it reads" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    done = subprocess.run([sys.executable, "-m", "residual_audio", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0 and all(s in done.stdout for s in ("preprocess", "extract", "train", "geometry"))


def test_packaging_declares_the_pinned_dependencies():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    pinned = {line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert declared == pinned
    assert project["scripts"]["residual-audio"] == "residual_audio.cli:main"


@pytest.mark.slow
@pytest.mark.model
def test_offline_example_runs_end_to_end(offline_example, tmp_path):
    """The README's offline `dvc exp run` (see tests/example_run.py), then its results pushed,
    cloned and pulled."""
    run = offline_example
    shown = run.sh(". .venv/bin/activate && dvc metrics show")
    assert "random" in shown
    assert (run.work / "metrics" / "comparison.md").is_file()
    assert "esc50" in (run.work / "metrics" / "comparison.md").read_text()

    # artefacts travel: push to a remote, clone, pull, and the clone is up to date
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    run.sh(f"git add -A && git -c user.name=t -c user.email=t@localhost commit -qm results && "
           f". .venv/bin/activate && dvc remote add -d store {remote} && dvc push -q")
    subprocess.run(["git", "clone", "-q", str(run.work), str(clone)], check=True)
    (clone / ".venv").symlink_to(run.venv.parent)
    out = run.sh(f". .venv/bin/activate && dvc remote add -d store {remote} --local -f && dvc pull -q && dvc status",
                 cwd=clone, timeout=600)
    assert "up to date" in out, out


def test_sweep_table_reads_the_per_dataset_metrics_of_dvc_exp_show():
    """scripts/sweep_table.py: one row per experiment, dataset and method from `dvc exp show --json`."""
    sys.path.insert(0, str(REPO / "scripts"))
    import sweep_table

    def run(name, layers, acc):
        return {"name": name, "rev": name, "data": {
            "rev": name, "params": {"params.yaml": {"data": {"inject_layers": layers}}},
            "metrics": {
                "metrics/esc50/accuracy/residual_fine.json": {"data": {"accuracy": acc, "std": 0.01, "params": 10,
                                                                       "weights": "random"}},
                "metrics/esc50/accuracy/zeroshot.json": {"data": {"accuracy": 0.5, "std": 0.0, "params": 0,
                                                                  "weights": "random"}}}}}

    tree = [{"rev": "workspace", "experiments": [run("a", [0], 0.6), run("b", [0, 1, 2, 3], 0.7)]}]
    frame = sweep_table.table(tree, ["residual_fine"])
    assert list(frame.experiment) == ["a", "b"] and list(frame.accuracy) == [0.6, 0.7]
    assert set(frame.dataset) == {"esc50"} and list(frame.inject_layers) == ["[0]", "[0, 1, 2, 3]"]


def test_help_texts_fit_100_columns_and_name_the_listed_datasets():
    from residual_audio.core.params import load_params
    from residual_audio.core.pipeline import STAGES, overview, stage_help

    params = load_params(REPO / "params.yaml")
    params["datasets"] = ["esc50", "folder"]
    for stage in STAGES.values():
        text = stage_help(stage, params)
        assert max(map(len, text.splitlines())) <= 100, stage.name
        assert "${item}" not in text, stage.name
    assert "data.esc50.source = " in stage_help(STAGES["download"], params)
    assert "data.folder.source = " in stage_help(STAGES["download"], params)
    assert max(map(len, overview().splitlines())) <= 100


@pytest.mark.slow
@pytest.mark.model
def test_experiments_travel_with_dvc_exp_push_and_pull(offline_example, tmp_path):
    """The README's experiment, pushed with `dvc exp push` to a git remote and a DVC remote, then pulled into a
    fresh clone with `dvc exp pull`: the clone lists it, applies it, and DVC finds every output in place."""
    run = offline_example
    names = run.sh(". .venv/bin/activate && dvc exp list --all-commits --name-only").split()
    assert names, "the README's `dvc exp run` made no experiment"
    exp = names[0]
    git_remote, dvc_remote, clone = tmp_path / "origin.git", tmp_path / "exps", tmp_path / "clone"
    subprocess.run(["git", "init", "-q", "--bare", str(git_remote)], check=True)
    run.sh(f"git remote add exps {git_remote} && git push -q exps HEAD:refs/heads/main && "
           f". .venv/bin/activate && dvc remote add exps {dvc_remote} --local -f && dvc exp push -r exps exps {exp}")
    subprocess.run(["git", "clone", "-q", "-b", "main", str(git_remote), str(clone)], check=True)
    (clone / ".venv").symlink_to(run.venv.parent)
    out = run.sh(f". .venv/bin/activate && dvc remote add -d exps {dvc_remote} --local -f && dvc exp pull origin {exp} && "
                 f"dvc exp list --all-commits --name-only && dvc exp apply {exp} && dvc status", cwd=clone, timeout=600)
    assert exp in out and "up to date" in out, out
    assert (clone / "metrics" / "comparison.md").is_file()
