"""Zero-shot ESC-50 with the official weights, against the published figure.

    python scripts/check_published.py                                   # 630k-audioset-best.pt
    python scripts/check_published.py --checkpoint CLAP_weights_2023.pth
    python scripts/check_published.py --esc50 path/to/ESC-50-master      # a local copy instead of the download

It runs the pipeline's own `model`, `download`, `preprocess`, `extract` and `text` stages for ESC-50
in a temporary project, scores the frozen model's zero-shot classifier with the prompt of the
publication, and compares the accuracy with the published one:

| checkpoint | published | clips | prompt | source |
| --- | --- | --- | --- | --- |
| `630k-audioset-best.pt` | 92.75 % | official fold 1 (400) | `This is a sound of {label}` | LAION-AI/CLAP README, "Zeroshot Classification with ESC50 official split", `enable_fusion=False`: R@1 0.9275 |
| `CLAP_weights_2023.pth` | 93.9 % | all five folds (2000) | `this is the sound of {label}` | msclap README, "ESC50 Accuracy: 93.9%" (its zero-shot example scores every clip) |

It prints the difference and exits 1 when it exceeds `--tolerance` (percentage points, default
1.5: the pipeline decodes and resamples audio its own exact way, where the published runs used
their libraries' loaders, which moves a few clips). It needs the internet, or local copies of the
checkpoint, the tokenizer files and ESC-50. `--published`/`--folds` replace the table's figure, for
another checkpoint; with random weights only the mechanics are tested (tests/test_check_published.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REFERENCES = {
    "630k-audioset-best.pt": dict(accuracy=92.75, folds=[1], template="This is a sound of {label}",
                                  source="LAION-AI/CLAP README (ESC50 official split, enable_fusion=False: R@1 0.9275)"),
    "CLAP_weights_2023.pth": dict(accuracy=93.9, folds=[1, 2, 3, 4, 5], template="this is the sound of {label}",
                                  source="msclap README (ESC50 Accuracy: 93.9%)"),
}
STAGES = ("model", "download", "preprocess", "extract", "text")


def compare(accuracy: float, published: float, tolerance: float) -> tuple[bool, str]:
    """(within tolerance, the line that says so); accuracies in percent."""
    diff = accuracy - published
    ok = abs(diff) <= tolerance
    verdict = "within" if ok else "beyond"
    return ok, (f"zero-shot accuracy {accuracy:.2f} %, published {published:.2f} %: difference {diff:+.2f} points, "
                f"{verdict} the tolerance of {tolerance:g}")


def zero_shot_accuracy(folds) -> tuple[float, int]:
    """(accuracy in percent, clips scored) of the project's ESC-50 heads store and text side, on `folds`."""
    from residual_audio.data.units import read_units
    from residual_audio.evaluation.zeroshot import load_text_side, zeroshot_logits

    store = read_units(Path("data/heads/esc50.zarr"))
    text = load_text_side(Path("data/text/esc50.npz"), store.classes)
    chosen = np.isin(store.fold, folds)
    if not chosen.any():
        raise SystemExit(f"check_published: the ESC-50 copy has no clip in folds {folds} (it has {sorted(set(store.fold))})")
    logits = zeroshot_logits(store.embedding[chosen], text)
    return 100.0 * float((logits.argmax(1) == store.label[chosen]).mean()), int(chosen.sum())


@contextlib.contextmanager
def _inside(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="630k-audioset-best.pt",
                        help="model.checkpoint: an official name, a URL or a local file (default 630k-audioset-best.pt)")
    parser.add_argument("--tokenizer", default="auto", help="model.tokenizer (default: the family's own, from the hub)")
    parser.add_argument("--esc50", default=None, help="data.esc50.source (default: the official download)")
    parser.add_argument("--limit", type=int, default=None, help="data.esc50.limit (default: every clip)")
    parser.add_argument("--published", type=float, default=None, help="the published accuracy, %% (default: the table)")
    parser.add_argument("--folds", default=None, help="folds scored, e.g. 1 or 1,2,3,4,5 (default: the table's)")
    parser.add_argument("--template", default=None, help="the prompt, with {label} (default: the table's)")
    parser.add_argument("--tolerance", type=float, default=1.5, help="largest difference, points (default 1.5)")
    parser.add_argument("--workdir", default=None, help="keep the temporary project here (default: removed after)")
    args = parser.parse_args(argv)

    ref = REFERENCES.get(Path(args.checkpoint).name)
    published = args.published if args.published is not None else (ref or {}).get("accuracy")
    if published is None:
        parser.error(f"no published figure for {args.checkpoint}; give --published and --folds")
    folds = [int(f) for f in args.folds.split(",")] if args.folds else (ref or {}).get("folds", [1, 2, 3, 4, 5])
    template = args.template or (ref or {}).get("template", "This is a sound of {label}")
    here = Path.cwd()
    local = lambda v: str((here / v).resolve()) if v and Path(v).exists() else v  # noqa: E731
    params = {"datasets": ["esc50"], "model": {"checkpoint": local(args.checkpoint), "tokenizer": local(args.tokenizer)},
              "data": {"esc50": {"source": local(args.esc50), "limit": args.limit}},
              "zeroshot": {"templates": [template]}}
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="check-published-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from residual_audio.cli import stage_functions
    from residual_audio.core.runner import execute

    functions = stage_functions()
    try:
        with _inside(work):
            for name in STAGES:
                if name == "model":
                    execute(name, functions[name])
                else:
                    execute(f"{name}@esc50", lambda p, f=functions[name]: f(p, "esc50"), dataset="esc50")
            accuracy, n = zero_shot_accuracy(folds)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    ok, line = compare(accuracy, published, args.tolerance)
    source = f" ({ref['source']})" if ref and args.published is None else ""
    print(f"ESC-50 zero-shot, {args.checkpoint}, folds {','.join(map(str, folds))} ({n} clips), "
          f"prompt {template!r}{source}")
    print(line)
    if args.checkpoint == "random":
        print("WARNING: random weights: this run tests the check's mechanics, it says nothing about CLAP")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
