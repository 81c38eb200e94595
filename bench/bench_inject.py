"""Inject-mode ResiDual (`residual_inject`): peak memory (RSS) and seconds per clip on the CPU.

Each configuration (`inject_layers` × `residual.granularity`) runs in its own subprocess, so
its peak RSS (`ru_maxrss`) is its own. The dataset is at ESC-50 scale: 2000 clips' log-mels
held in memory (float32, as the train loop holds the mel store) and the entry cache of the
first injected stage for all 2000 clips (for stages > 0 filled with random values of the
right shape: memory does not depend on the values, and computing it would take most of the
time). The estimator then fits one fold with the `identity` recipe at `variance: 1.0` (every
component gets a λ) — token bases (one no-grad forward over the fitting
clips), one training epoch at the recipe's batch size in micro-batches, validation passes —
on `--fit` fitting clips, for each value given. Peak RSS that does not grow with the number
of fitting clips shows the bound holds at ESC-50's 1440.

Run: python bench/bench_inject.py [--fit 32 128] [--layers 0 3] [--granularity head stage]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_CLIPS = 2000  # ESC-50
N_VAL = 16


def one(stage: int, granularity: str, n_fit: int, batch: int, micro: int, threads: int) -> dict:
    """Fit one fold in this process; returns timings and the peak RSS."""
    from residual_audio.evaluation.protocol import Split
    from residual_audio.evaluation.zeroshot import TextSide
    from residual_audio.models.checkpoints import projection_weights
    from residual_audio.methods import FoldData
    from residual_audio.methods.residual.inject import ENTRY_KEY, ResidualInject
    from residual_audio.methods.residual.maths import RECIPES
    from residual_audio.models.hooked import HookedHTSAT
    from residual_audio.models.laion import build_model, logit_scale

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    model = build_model("tiny", seed=0)
    hooked = HookedHTSAT(model)
    gen = torch.Generator().manual_seed(0)
    mel = torch.empty(N_CLIPS, 1001, 64).normal_(-20, 5, generator=gen).numpy()  # log-mel-like values, 512 MB, no temporaries
    context = dict(hooked=hooked, device=torch.device("cpu"), mel=mel)
    if stage > 0:
        with torch.no_grad():
            shape = hooked.stream_into(stage, torch.from_numpy(mel[:1])).shape[1:]
        context[ENTRY_KEY.format(stage=stage)] = torch.randn(N_CLIPS, *shape, generator=gen)
    label = np.arange(N_CLIPS) % 50
    classes = torch.nn.functional.normalize(torch.randn(50, 512, generator=gen), dim=-1).numpy()
    text = TextSide([str(c) for c in range(50)], classes, logit_scale(model), projection_weights(model),
                    "random", ["{label}"])
    split = Split("fold", np.arange(n_fit), np.arange(n_fit, n_fit + N_VAL), np.arange(n_fit + N_VAL, N_CLIPS))
    data = FoldData(store=SimpleNamespace(label=label, classes=text.classes), text=text, split=split, context=context)
    recipe = dataclasses.replace(RECIPES["identity"], variance=1.0, max_epochs=1, batch_size=batch, lr=0.01)
    est = ResidualInject(recipe=recipe, granularity=granularity, stages=[stage], device="cpu", micro_batch=micro)
    t0 = time.perf_counter()
    est.fit(data)
    seconds = time.perf_counter() - t0
    return dict(stage=stage, granularity=granularity, fit_clips=n_fit, batch=batch, micro=micro, lam=est.n_params_,
                seconds_per_fit_clip=seconds / n_fit, peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", type=int, nargs="+", default=[32, 128], help="fitting clips per run")
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--granularity", nargs="+", default=["head", "stage"])
    ap.add_argument("--batch", type=int, default=64, help="the recipe's batch size")
    ap.add_argument("--micro", type=int, default=8, help="residual.inject.micro_batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(**json.loads(args.one))))
        return
    print(f"HTSAT-tiny, random weights, CPU ({args.threads} threads), {N_CLIPS} clips held, recipe batch {args.batch}, "
          f"micro-batch {args.micro}, one epoch")
    print(f"{'inject_layers':>13} {'granularity':>11} {'λ':>5} {'fit clips':>9} {'s/fit clip':>10} {'peak RSS':>9}")
    for stage in args.layers:
        for granularity in args.granularity:
            for n_fit in args.fit:
                spec = dict(stage=stage, granularity=granularity, n_fit=n_fit, batch=args.batch, micro=args.micro,
                            threads=args.threads)
                out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                                     text=True, check=True, cwd=ROOT)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{str([stage]):>13} {granularity:>11} {r['lam']:>5} {n_fit:>9} {r['seconds_per_fit_clip']:>10.3f} "
                      f"{r['peak_rss_gib']:>7.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
