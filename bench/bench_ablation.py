"""Total-effect ablation: seconds per clip per head through HTSAT-tiny (random weights, noise clips).

One ablated forward starts from the cached stream entering the head's stage, so its cost
depends on the stage; the mean over the 184 heads (8, 16, 96, 64 heads in stages 0-3) times
184 is the cost per clip of `ablation.total: true`, on top of one full forward for the cache.

Run: python bench/bench_ablation.py [--device cpu|cuda|auto] [--clips 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.analysis.ablation import ablated_embedding, head_mean_hook, stage_streams  # noqa: E402
from residual_audio.models.hooked import HookedHTSAT  # noqa: E402
from residual_audio.models.laion import build_model, log_mel  # noqa: E402
from residual_audio.models.device import resolve_device  # noqa: E402


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    model = build_model("tiny", seed=0).to(device)
    hooked = HookedHTSAT(model)
    mel = log_mel(model, torch.randn(args.clips, 480000, generator=torch.Generator().manual_seed(0)).to(device) * 0.1)
    arch = hooked.arch
    with torch.no_grad():
        stage_streams(hooked, mel[: args.batch])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        batches = [stage_streams(hooked, mel[i:i + args.batch]) for i in range(0, args.clips, args.batch)]
        sync(device)
        cache_s = (time.perf_counter() - t0) / args.clips
        per_stage = []
        for s in range(len(arch.depths)):
            hook = head_mean_hook(0, torch.zeros(arch.head_dim, device=device))
            ablated_embedding(hooked, batches[0][0], s, 0, hook)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                for streams, _ in batches:
                    ablated_embedding(hooked, streams, s, 0, hook)
            sync(device)
            per_stage.append((time.perf_counter() - t0) / (args.repeats * args.clips))
    n_heads = [arch.depths[s] * arch.heads[s] for s in range(len(arch.depths))]
    mean = sum(n * t for n, t in zip(n_heads, per_stage)) / sum(n_heads)
    print(f"device {device}, {args.clips} clips, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"stream cache (one full forward): {cache_s * 1e3:.1f} ms/clip")
    for s, (n, t) in enumerate(zip(n_heads, per_stage)):
        print(f"stage {s} ({n:3d} heads): {t * 1e3:.1f} ms per clip per head")
    print(f"mean over {sum(n_heads)} heads: {mean * 1e3:.1f} ms per clip per head; "
          f"all heads: {mean * sum(n_heads):.2f} s/clip; ESC-50 (2000 clips): {mean * sum(n_heads) * 2000 / 3600:.2f} h")


if __name__ == "__main__":
    main()
