"""What DVC does when a stage is killed, as docs/security.md states it: DVC removes a stage's
outputs before running its command, so a killed run leaves them gone, and `dvc checkout` brings
the previous ones back from the cache (dvc.lock still names them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

STAGE = """stages:
  s:
    cmd: python -c "import time; n = open('in.txt').read(); time.sleep(int(n)); open('out.txt', 'w').write(n)"
    deps: [in.txt]
    outs: [out.txt]
"""


@pytest.mark.slow
def test_a_killed_stage_loses_its_outputs_and_dvc_checkout_restores_them(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}

    def dvc(*args, **kw):
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, **kw)

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert dvc("init", "-q").returncode == 0
    (tmp_path / "dvc.yaml").write_text(STAGE)
    (tmp_path / "in.txt").write_text("0")
    assert dvc("repro", "-q").returncode == 0 and (tmp_path / "out.txt").read_text() == "0"
    (tmp_path / "in.txt").write_text("60")
    run = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-q"], cwd=tmp_path, env=env, start_new_session=True)
    deadline = time.time() + 60
    while (tmp_path / "out.txt").exists() and time.time() < deadline:  # DVC removes the output first
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    assert not (tmp_path / "out.txt").exists()
    assert dvc("checkout").returncode == 0
    assert (tmp_path / "out.txt").read_text() == "0"
