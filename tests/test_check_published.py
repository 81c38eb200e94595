"""`scripts/check_published.py`, the check against the published zero-shot ESC-50 figures. The real
check needs the official weights and the internet; here its mechanics run on random weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from check_published import REFERENCES, compare  # noqa: E402


def test_the_verdict_and_the_published_table():
    assert compare(92.0, 92.75, 1.5)[0] and not compare(90.0, 92.75, 1.5)[0]
    ok, line = compare(91.0, 92.75, 1.5)
    assert not ok and "difference -1.75 points, beyond the tolerance of 1.5" in line
    assert REFERENCES["630k-audioset-best.pt"]["accuracy"] == 92.75 and REFERENCES["630k-audioset-best.pt"]["folds"] == [1]
    assert REFERENCES["CLAP_weights_2023.pth"]["accuracy"] == 93.9


def test_the_command_runs_the_stages_and_exits_non_zero_beyond_the_tolerance(shared_data, tmp_path):
    esc50, tokenizer = shared_data / "esc50-fold4", shared_data / "roberta-base"
    if not esc50.is_dir() or not tokenizer.is_dir():
        pytest.skip("needs ../shared/data/esc50-fold4 and roberta-base")
    done = subprocess.run([sys.executable, str(REPO / "scripts/check_published.py"), "--checkpoint", "random",
                           "--tokenizer", str(tokenizer), "--esc50", str(esc50), "--limit", "50", "--folds", "4",
                           "--published", "60", "--tolerance", "1", "--workdir", str(tmp_path / "work")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "folds 4 (50 clips)" in done.stdout and "beyond the tolerance of 1" in done.stdout, done.stdout
    assert (tmp_path / "work/data/heads/esc50.zarr").is_dir()  # the pipeline's own stages made it
