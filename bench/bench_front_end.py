"""How far LAION's API front end moves the embeddings, relative to the spread between clips.

    python bench/bench_front_end.py [--clips 400] [--data ../shared/data/esc50-fold4]

Runs every clip through both `preprocess.front_end`s (`exact`: exact-length polyphase
resampling; `laion_api`: librosa as LAION's `get_audio_embedding_from_filelist`) and the same
model, an official-format checkpoint of seeded random weights (RANDOM WEIGHTS: the sizes
describe the front ends acting on this network, not pretrained CLAP). Prints, for the 512-d
`audio_embed` and the 768-d `embedding`: the per-clip distance between the two front ends
(median, 95th percentile, max), the median distance between two different clips, and their
ratio, plus the cosine between the two front ends' embeddings of a clip.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from scipy.spatial.distance import pdist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.data import audio  # noqa: E402
from residual_audio.data.datasets import list_clips, select  # noqa: E402
from residual_audio.models import checkpoints
from residual_audio.models import laion as clap


def embed(model, front, clips, front_end: str, batch_size: int) -> dict[str, np.ndarray]:
    out = {"embedding": [], "audio_embed": []}
    for start in range(0, len(clips), batch_size):
        waves = []
        for clip in clips[start:start + batch_size]:
            x, sr = audio.decode(clip.path)
            x = audio.load_laion_api(clip.path) if front_end == "laion_api" else audio.resample(x, sr)
            waves.append(audio.fit_length(audio.quantize_int16(x)))
        with torch.no_grad():
            e = clap.audio_embedding_from_mel(model, front(torch.from_numpy(np.stack(waves))))
        for k in out:
            out[k].append(e[k].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=repo.parent / "shared" / "data" / "esc50-fold4")
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    if not (args.data / "meta" / "esc50.csv").is_file():
        sys.exit(f"{args.data}: ESC-50 layout not found (pass --data)")
    clips, _ = list_clips("esc50", args.data)
    clips = select(clips, args.clips, seed=0)
    lengths = {front_end: [] for front_end in ("exact", "laion_api")}
    for clip in clips:
        x, sr = audio.decode(clip.path)
        lengths["exact"].append(len(audio.resample(x, sr)))
        lengths["laion_api"].append(len(audio.load_laion_api(clip.path)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "630k-audioset-best.pt"
        clap.save_checkpoint(clap.build_model("tiny", seed=0), path)
        model = checkpoints.load_model(path)
        front = checkpoints.front_end(path)
    exact = embed(model, front, clips, "exact", args.batch_size)
    api = embed(model, front, clips, "laion_api", args.batch_size)
    n = len(clips)
    longer = int(np.sum(np.array(lengths["laion_api"]) != np.array(lengths["exact"])))
    print(f"{n} ESC-50 clips, official-format checkpoint with RANDOM WEIGHTS (seed 0)")
    print(f"48 kHz length differs between the front ends on {longer}/{n} clips "
          f"(exact {np.median(lengths['exact']):.0f}, laion_api {np.median(lengths['laion_api']):.0f} samples, median)")
    print("| vector | front-end shift: median | p95 | max | between clips: median | shift / spread (median) | cosine exact·api: min |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key in ("audio_embed", "embedding"):
        shift = np.linalg.norm(exact[key] - api[key], axis=1)
        spread = np.median(pdist(exact[key]))
        a = exact[key] / np.linalg.norm(exact[key], axis=1, keepdims=True)
        b = api[key] / np.linalg.norm(api[key], axis=1, keepdims=True)
        cos = np.sum(a * b, axis=1)
        print(f"| `{key}` | {np.median(shift):.4g} | {np.percentile(shift, 95):.4g} | {shift.max():.4g} | "
              f"{spread:.4g} | {np.median(shift) / spread:.3f} | {cos.min():.6f} |")


if __name__ == "__main__":
    main()
