"""Any OSError a stage meets (not a directory, a name too long, a full disk, permissions) ends in one
line naming the user's own path: a temporary sibling is shown as the output it stands for."""

from __future__ import annotations

import pytest

from residual_audio.core.io import atomic_path
from residual_audio.core.runner import execute


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    return tmp_path


def _exit_line(run) -> str:
    with pytest.raises(SystemExit) as exc:
        execute("stage", run, "params.yaml")
    return str(exc.value.code)


def test_a_file_where_a_folder_is_needed_is_one_line(project):
    (project / "metrics").write_text("not a folder")

    def run(params):
        with atomic_path(project / "metrics" / "out.json") as tmp:
            tmp.write_text("{}")

    line = _exit_line(run)
    assert line.startswith(f"stage: {project / 'metrics'}: ") and "\n" not in line
    assert "File exists" in line or "Not a directory" in line


def test_a_name_too_long_names_the_output_not_its_temporary(project):
    (project / "plots").mkdir()
    final = project / "plots" / ("x" * 250)  # fits, but its temporary sibling (.<name>.tmp-<pid>-<hex>) does not

    def run(params):
        with atomic_path(final) as tmp:
            tmp.write_text("{}")

    line = _exit_line(run)
    assert "File name too long" in line and "\n" not in line
    assert ".tmp-" not in line and str(final) in line
    assert list((project / "plots").iterdir()) == []
