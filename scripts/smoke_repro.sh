#!/usr/bin/env bash
# A tiny offline end-to-end run of the pipeline in a temporary copy of the repository:
# random weights, a handful of clips (the real ESC-50 fold-4 copy when ../shared exists,
# otherwise a generated folder dataset), every stage that dvc.yaml declares.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
export PATH="$venv/bin:$PATH"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 cp --parents -t "$work")
cd "$work"
git init -q && git add -A && git -c user.name=ci -c user.email=ci@localhost commit -qm snapshot
[ -d .dvc ] || dvc init -q

shared="${RESIDUAL_AUDIO_SHARED:-$repo/../shared}"
python - "$shared" <<'PY'
import sys
from pathlib import Path

import yaml

shared = Path(sys.argv[1]) / "data"
params = yaml.safe_load(open("params.yaml"))
if (shared / "esc50-fold4").is_dir():
    params["dataset"] = "esc50"
    params["data"]["esc50"].update(source=str(shared / "esc50-fold4"), limit=8)
else:
    sys.path.insert(0, "scripts")
    from make_tone_dataset import make

    params["dataset"] = "folder"
    params["data"]["folder"].update(source=str(make(Path("tones"))), limit=8)
params["model"]["checkpoint"] = "random"
tokenizer = shared / "roberta-base"
params["model"]["tokenizer"] = str(tokenizer) if tokenizer.is_dir() else None
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
dvc repro
dvc metrics show || true
echo "smoke repro: OK"
