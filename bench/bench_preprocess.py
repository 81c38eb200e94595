"""Preprocess throughput vs the model's own forward, measured side by side in one run.

    python bench/bench_preprocess.py [--clips 400] [--data ../shared/data/esc50-fold4] [--workers 2]

Prints clips/s of preprocessing (wall) with its per-stage share (decode, resample, mel,
write), clips/s of a plain HTSAT-tiny forward from the cached mel, and their ratio
(target: preprocessing at least 4x the forward, so it is never the bottleneck).
Uses seeded random weights: speed does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.data.datasets import list_clips, select  # noqa: E402
from residual_audio.models import checkpoints
from residual_audio.models import laion as clap  # noqa: E402
from residual_audio.stages import preprocess


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=repo.parent / "shared" / "data" / "esc50-fold4")
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--forward-clips", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="decoding processes (preprocess.workers)")
    args = ap.parse_args()
    if not (args.data / "meta" / "esc50.csv").is_file():
        sys.exit(f"{args.data}: ESC-50 layout not found (pass --data)")

    clips, classes = list_clips("esc50", args.data)
    clips = select(clips, args.clips, seed=0)
    front = checkpoints.front_end("random")
    print(f"torch threads: {torch.get_num_threads()}; RANDOM WEIGHTS (speed only)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        timings = preprocess.preprocess(clips, classes, front, Path(tmp) / "m.zarr", Path(tmp) / "m.csv",
                                        dataset="esc50", weights="random", batch_size=args.batch_size, progress=False,
                                        workers=args.workers)
        wall = time.perf_counter() - t0
        mel = torch.from_numpy(zarr.open_group(Path(tmp) / "m.zarr", mode="r")["mel"][: args.forward_clips])
    pre_rate = len(clips) / wall
    total = sum(timings.values())
    print(f"preprocess: {len(clips)} clips in {wall:.1f} s = {pre_rate:.1f} clips/s")
    for k, v in timings.items():
        print(f"  {k:9s} {v:6.2f} s  {v / total:5.1%}")

    model = clap.build_model("tiny", seed=0)
    with torch.no_grad():
        clap.audio_embedding_from_mel(model, mel[:2])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(mel), args.batch_size):
            clap.audio_embedding_from_mel(model, mel[i : i + args.batch_size])
        fwd = time.perf_counter() - t0
    fwd_rate = len(mel) / fwd
    print(f"model forward (HTSAT-tiny, from mel): {fwd_rate:.1f} clips/s")
    print(f"ratio preprocess / forward: {pre_rate / fwd_rate:.1f}x (target >= 4x)")


if __name__ == "__main__":
    main()
