"""Inject-mode ResiDual: seconds per training epoch through HTSAT-tiny, per first injected stage.

Random weights, seeded noise clips (timings do not depend on the weights). For each entry of
--layers it prints the one-off cost of the entry cache, the no-grad evaluation cost and the
training cost (forward + backward + step), per epoch and per clip, so that a fold of
ESC-50 (1440 fitting + 160 validation clips) can be extrapolated:
epoch ≈ 1440 · train s/clip + 160 · eval s/clip.

Run: python bench/bench_inject.py [--device cpu|cuda|auto] [--clips 32] [--batch 8] [--layers 0 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.clap import Architecture, build_model, log_mel, logit_scale  # noqa: E402
from residual_audio.decompose import head_rows  # noqa: E402
from residual_audio.extract import HeadExtractor, resolve_device  # noqa: E402
from residual_audio.hooked import HookedHTSAT  # noqa: E402
from residual_audio.inject import FromCache, InjectResiDual, entry_inputs, head_name  # noqa: E402
from residual_audio.residual import fit_bases  # noqa: E402
from residual_audio.training import TrainConfig, evaluate, train  # noqa: E402
from residual_audio.zeroshot import FrozenHead, TextSide, projection_weights  # noqa: E402


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")

    model = build_model("tiny", seed=0)
    gen = torch.Generator().manual_seed(0)
    wave = torch.randn(args.clips, 480000, generator=gen) * torch.linspace(0.02, 0.5, args.clips)[:, None]
    mel = log_mel(model, wave)
    labels = np.arange(args.clips) % 2
    model = model.to(device)
    hooked = HookedHTSAT(model)
    with torch.no_grad():
        pre = torch.cat([HeadExtractor(model, ["pre"])(mel[i:i + args.batch].to(device))["heads/pre"].cpu()
                         for i in range(0, args.clips, args.batch)]).numpy()
    names = [head_name(*r) for r in head_rows(Architecture.of(model))]
    bases = fit_bases(pre, np.arange(len(names)), names, 0.95)
    classes = torch.nn.functional.normalize(torch.randn(2, 512, generator=gen), dim=-1).numpy()
    text = TextSide(["a", "b"], classes, logit_scale(model), projection_weights(model.audio_projection), "random", ["{label}"])

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"HTSAT-tiny, random weights, {args.clips} clips, batch {args.batch}, {args.epochs} epochs, device {name}")
    print(f"{'inject_layers':>13} {'lambda':>6} {'cache s/clip':>12} {'eval s/clip':>11} {'train s/epoch':>13} "
          f"{'train s/clip':>12} {'ESC-50 fold epoch (est.)':>24}")
    for stage in args.layers:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        cache = entry_inputs(hooked, mel.numpy(), stage, args.batch, device)
        sync(device)
        t_cache = time.perf_counter() - t0 if stage else 0.0
        inner = InjectResiDual(hooked, FrozenHead(text), bases, [stage]).to(device)
        wrapped = FromCache(inner, cache)
        idx, y = (torch.arange(args.clips),), torch.from_numpy(labels)
        evaluate(wrapped, (idx[0][: args.batch],), y[: args.batch], args.batch)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        evaluate(wrapped, idx, y, args.batch)
        sync(device)
        t_eval = time.perf_counter() - t0
        cfg = TrainConfig(max_epochs=args.epochs, lr=0.01, patience=args.epochs, batch_size=args.batch, eval_batch=args.batch)
        t0 = time.perf_counter()
        train(wrapped, idx, labels, (torch.arange(0),), labels[:0], cfg)  # epoch 0 evaluates the training clips once
        sync(device)
        t_epoch = (time.perf_counter() - t0 - t_eval) / args.epochs
        per_clip = t_epoch / args.clips
        fold = 1440 * per_clip + 160 * t_eval / args.clips
        print(f"{str([stage]):>13} {inner.lam.numel():>6} {t_cache / args.clips:>12.4f} {t_eval / args.clips:>11.4f} "
              f"{t_epoch:>13.2f} {per_clip:>12.4f} {fold:>22.1f} s")
        if device.type == "cuda":
            print(f"{'':>13} peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {rss:.2f} GiB")


if __name__ == "__main__":
    main()
