"""The README's quick start on your own audio: one command on a folder of clips (one sub-folder per
class), the `quick` profile, every stage, the headline table within 120 columns."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from example_run import REPO, commands, project_copy

from residual_audio.core.params import load_params


def test_the_quick_profile_sets_known_keys_to_valid_values():
    from residual_audio.core.schema import validate

    params = load_params(REPO / "params.yaml")
    for line in (REPO / "scripts" / "quick_params.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            node = params
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            assert leaf in node, key
            import yaml

            node[leaf] = yaml.safe_load(value)
    validate(params)
    assert params["methods"] == ["zeroshot", "linear_probe", "residual_fine"]


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.shared
def test_quick_start_runs_every_stage_on_a_folder_of_clips(shared_data, tmp_path):
    found = [c for c in commands() if "scripts/quick_start.sh" in c]
    assert len(found) == 1, "the README shows one quick-start command"
    tones = tmp_path / "my clips"  # a space in the path, as users' folders have
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tone_dataset.py"), str(tones)], check=True,
                   capture_output=True)
    run = project_copy(tmp_path)
    command = found[0].replace("path/to/clips", f"'{tones}'") + (
        f" -S model.checkpoint=random -S model.tokenizer={shared_data / 'roberta-base'}")
    out = run.sh(command)
    for method in ("zeroshot", "linear_probe", "residual_fine"):
        result = json.loads((run.work / "metrics/folder/accuracy" / f"{method}.json").read_text())
        assert result["weights"] == "random" and 0 <= result["accuracy"] <= 1
    assert (run.work / "metrics/folder/fewshot.json").is_file() and (run.work / "metrics/geometry.json").is_file()
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("Path")):]  # `dvc metrics show`
    assert len(table) == 4 and max(len(line) for line in table) <= 120, out
    usage = subprocess.run(["bash", str(run.work / "scripts" / "quick_start.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash scripts/quick_start.sh path/to/clips" in usage.stderr
