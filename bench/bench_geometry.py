"""Wall time of every intrinsic-dimension estimator over all heads of HTSAT-tiny.

Synthetic data of the real shape: 184 heads × 2000 clips; pre-projection clouds are
24-dim (a curved low-dimensional manifold plus noise), post-projection clouds are a
random linear image of them in the stage width (96/192/384/768 for stages with
8/16/96/64 heads), as the output projection makes them. Target: ≤ 60 s on 2 cores.

    python bench/bench_geometry.py [--clips 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from residual_audio.analysis import geometry, intrinsic

DEPTHS, HEADS, HEAD_DIM = (2, 2, 6, 2), (4, 8, 16, 32), 24


def pre_clouds(n_heads: int, n_clips: int, rng) -> np.ndarray:
    """Curved manifolds of dimension 3..12 in 24 dims, plus a little noise."""
    out = np.empty((n_heads, n_clips, HEAD_DIM), np.float32)
    for h in range(n_heads):
        d = 3 + h % 10
        z = rng.standard_normal((n_clips, d))
        out[h] = np.tanh(z @ rng.standard_normal((d, HEAD_DIM))) + 0.01 * rng.standard_normal((n_clips, HEAD_DIM))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heads-per-batch", type=int, default=8)
    parser.add_argument("--full-rank-post", action="store_true",
                        help="add isotropic noise to post clouds (worst case: no rank reduction)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    labels = np.arange(args.clips) % 50

    timings = {"pre": 0.0, "post": 0.0, "fisher": 0.0}
    cpu0 = time.process_time()
    for stage, (depth, n_heads) in enumerate(zip(DEPTHS, HEADS)):
        count, width = depth * n_heads, n_heads * HEAD_DIM
        pre = pre_clouds(count, args.clips, rng)
        proj = rng.standard_normal((count, HEAD_DIM, width)).astype(np.float32) / np.sqrt(HEAD_DIM)
        post = np.einsum("hnd,hdw->hnw", pre, proj) + rng.standard_normal((count, 1, width)).astype(np.float32)
        if args.full_rank_post:
            post += 0.01 * rng.standard_normal(post.shape).astype(np.float32)
        spent = {}
        for regime, clouds in (("pre", pre), ("post", post)):
            t0 = time.perf_counter()
            for start in range(0, count, args.heads_per_batch):
                intrinsic.estimate(clouds[start : start + args.heads_per_batch])
            spent[regime] = time.perf_counter() - t0
            timings[regime] += spent[regime]
            t0 = time.perf_counter()
            for start in range(0, count, args.heads_per_batch):
                geometry.fisher_scores(clouds[start : start + args.heads_per_batch], labels)
            timings["fisher"] += time.perf_counter() - t0
        print(f"stage {stage}: {count:3d} heads, width {width:3d}: pre {spent['pre']:5.1f} s, post {spent['post']:5.1f} s", flush=True)

    total = sum(timings.values())
    cpu = time.process_time() - cpu0
    kind = "full-rank (noisy)" if args.full_rank_post else "rank <= 24 (projection of pre)"
    print(f"clips {args.clips}, heads 184 × 2 regimes, post clouds {kind}, torch threads {args.threads}")
    print(f"pre  (24 dims)            : {timings['pre']:6.1f} s")
    print(f"post (96..768 dims)       : {timings['post']:6.1f} s")
    print(f"fisher (both regimes)     : {timings['fisher']:6.1f} s")
    print(f"total (all estimators)    : {total:6.1f} s wall   (target <= 60 s on 2 cores)")
    print(f"process CPU time          : {cpu:6.1f} s   (incl. synthetic data generation)")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}  (other processes share the cores)")


if __name__ == "__main__":
    main()
