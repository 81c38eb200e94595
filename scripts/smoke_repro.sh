#!/usr/bin/env bash
# A tiny offline end-to-end run of the pipeline in a temporary copy of the repository,
# driven the way users drive experiments (`dvc exp run -S ...`): random weights, a handful
# of clips (the real ESC-50 fold-4 copy when ../shared exists, otherwise a generated folder
# dataset of tones), every stage that dvc.yaml declares, then `dvc metrics show`.
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

shared="${RESIDUAL_AUDIO_SHARED:-$repo/../shared}/data"
set -- -S model.checkpoint=random
if [ -d "$shared/esc50-fold4" ]; then
  set -- "$@" -S dataset=esc50 -S "data.esc50.source=$shared/esc50-fold4" -S data.esc50.limit=8
else
  python scripts/make_tone_dataset.py "$work/tones" >/dev/null
  set -- "$@" -S dataset=folder -S "data.folder.source=$work/tones" -S data.folder.limit=8
fi
if [ -d "$shared/roberta-base" ]; then
  set -- "$@" -S "model.tokenizer=$shared/roberta-base"
else
  set -- "$@" -S model.tokenizer=none
fi
if [ -f scripts/smoke_params.txt ]; then
  while read -r override; do [ -n "$override" ] && set -- "$@" -S "$override"; done < scripts/smoke_params.txt
fi
git -c user.name=ci -c user.email=ci@localhost commit -qm snapshot --allow-empty
dvc exp run "$@"
dvc metrics show || true
echo "smoke repro: OK"
