#!/usr/bin/env bash
# A tiny offline end-to-end run of the pipeline in a temporary copy of the repository,
# driven the way users drive experiments (`dvc exp run -S ...`): random weights, a handful
# of generated tones (4 classes), quick settings from scripts/smoke_params.txt, every stage
# that dvc.yaml declares (up to geometry without the roberta-base files of ../shared), then
# `dvc metrics show`. SMOKE_KEEP=1 keeps the temporary copy (its path is printed).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
export PATH="$venv/bin:$PATH"
work="$(mktemp -d)"
if [ -n "${SMOKE_KEEP:-}" ]; then
  echo "smoke repro: working copy kept at $work"   # look at its metrics and plots afterwards
else
  trap 'rm -rf "$work"' EXIT
fi

git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 cp --parents -t "$work")
cd "$work"
git init -q && git add -A && git -c user.name=ci -c user.email=ci@localhost commit -qm snapshot
[ -d .dvc ] || dvc init -q

shared="${RESIDUAL_AUDIO_SHARED:-$repo/../shared}/data"
python scripts/make_tone_dataset.py "$work/tones" >/dev/null
set -- -S model.checkpoint=random -S 'datasets=[folder]' -S "data.folder.source=$work/tones"
targets=()
if [ -d "$shared/roberta-base" ]; then
  set -- "$@" -S "model.tokenizer=$shared/roberta-base"
else
  # no tokenizer: the text side (zero-shot, ResiDual, baselines) cannot run
  set -- "$@" -S model.tokenizer=none
  targets=(geometry)
fi
while read -r override; do
  [ -n "$override" ] && [ "${override:0:1}" != "#" ] && set -- "$@" -S "$override"
done < scripts/smoke_params.txt
git -c user.name=ci -c user.email=ci@localhost commit -qm snapshot --allow-empty
dvc exp run "$@" "${targets[@]}"
dvc metrics show || true
echo "smoke repro: OK"
