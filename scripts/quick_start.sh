#!/usr/bin/env bash
# Quick start on your own audio: `bash scripts/quick_start.sh path/to/clips [-S key=value ...]`.
# `path/to/clips` holds one sub-folder per class (any audio soundfile reads). Runs every stage as a
# DVC experiment with the `quick` profile (scripts/quick_params.txt) and prints the headline table.
# Extra `-S` overrides come last and win, e.g. offline `-S model.checkpoint=random` (random weights:
# a dry run that says nothing about CLAP) with `-S model.tokenizer=<a folder with vocab.json and
# merges.txt>`, or `-S model.checkpoint=CLAP_weights_2023.pth` (MS-CLAP 2023).
set -euo pipefail
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
  echo "usage: bash scripts/quick_start.sh path/to/clips [-S key=value ...]   (one sub-folder per class)" >&2
  exit 2
fi
clips="$(cd "$1" && pwd)"   # absolute: DVC may run the experiment in another folder
shift
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
set -- -S 'datasets=[folder]' -S "data.folder.source=$clips" "$@"
quick=()
while read -r override; do
  [ -n "$override" ] && [ "${override:0:1}" != "#" ] && quick+=(-S "$override")
done < scripts/quick_params.txt
dvc exp run "${quick[@]}" "$@"
dvc metrics show
