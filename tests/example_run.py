"""The README's offline example, run once per test session in a fresh git + DVC copy of the
project: verbatim but for the audio (generated clips in ESC-50's layout instead of ../shared's
real fold 4) and the quick settings of scripts/smoke_params.txt. Every stage records what it
imported and which params it read (`residual_audio.trace`), for the run-time deps test."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESIDUAL_AUDIO_SHARED", REPO.parent / "shared"))


def bash_blocks(path: Path = REPO / "README.md") -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)


def commands(path: Path = REPO / "README.md") -> list[str]:
    """Every command of a Markdown file's bash blocks, continuation lines joined."""
    out = []
    for block in bash_blocks(path):
        out += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.strip().startswith("#")]
    return out


def offline_example() -> str:
    found = [c for c in commands() if "dvc exp run" in c and "model.checkpoint=random" in c and "esc50-fold4" in c]
    assert len(found) == 1, "the README shows one offline example on ../shared's ESC-50 fold 4"
    return found[0]


def quick_settings() -> list[str]:
    return [line.strip() for line in (REPO / "scripts" / "smoke_params.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


@dataclass
class ExampleRun:
    work: Path  # the project copy the example ran in
    trace: Path  # one JSON per stage run: modules imported, params read
    env: dict
    venv: Path  # its .venv/bin (an `activate` that puts this interpreter first)

    def sh(self, cmd: str, cwd: Path | None = None, timeout: int = 1500) -> str:
        done = subprocess.run(["bash", "-c", cmd], cwd=cwd or self.work, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout


def project_copy(tmp: Path, trace: Path | None = None) -> ExampleRun:
    """A fresh git copy of the project (tracked and untracked files) whose `.venv/bin/activate` puts
    this interpreter first; `trace`: where the stages record what they import and read."""
    work = tmp / "project"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if trace is not None:
        env["RESIDUAL_AUDIO_TRACE"] = str(trace)
    venv = work / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text(f"export PATH={Path(sys.executable).parent}:$PATH\n")
    run = ExampleRun(work, trace, env, venv)
    run.sh("git init -q && git add -A && git -c user.name=t -c user.email=t@localhost commit -qm snapshot")
    return run


def run_offline_example(tmp: Path, tokenizer: Path, checkpoint: str = "random", cache_type: str | None = None) -> ExampleRun:
    """The README's offline example in a fresh copy; `checkpoint` replaces its `random` weights (a
    checkpoint file), `cache_type` sets DVC's cache link type (hardlink: a large file is not copied)."""
    from test_datasets import fake_esc50

    audio = tmp / "esc50-fold4"
    fake_esc50(audio, folds=(4,), per_class=4)  # cv.k=2 leaves 2 per class: a 1-shot draw and its validation draw
    example = offline_example().replace("../shared/data/esc50-fold4", str(audio)).replace(
        "../shared/data/roberta-base", str(tokenizer)).replace("model.checkpoint=random", f"model.checkpoint={checkpoint}")
    command = example + "".join(f" -S {shlex.quote(q)}" for q in quick_settings())
    run = project_copy(tmp, tmp / "trace")
    if cache_type:
        run.sh(f"dvc config --local cache.type {cache_type}")
    run.sh(command)
    return run
