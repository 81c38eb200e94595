"""Throughput and memory of extraction, against LAION's plain forward, on one machine.

Prints, from one run on the same batch of log-mels:
  * plain forward (LAION's path from the mel) in clips/s,
  * our hooked forward with pooled head outputs (pre + post + streams), and its ratio to plain
    (target ≥ 0.9),
  * the full extraction with the direct decomposition, and its ratio to plain (target ≥ 0.5),
  * peak RSS of extracting 100 and 400 clips to a store, each in its own subprocess
    (memory should not grow with the number of clips).

Random weights (`weights: random`); the batch is real ESC-50 audio when ../shared is present,
random log-mels otherwise.

    python bench/bench_extract.py --device cpu --clips 8 --rss 100,400
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def random_mels(n: int, seed: int = 0) -> np.ndarray:
    """Log-mel-like noise (dB scale around the model's bn0 statistics)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 1001, 64)) * 3 - 10).astype(np.float32)


def shared_mels(model, n: int) -> np.ndarray | None:
    folder = Path(os.environ.get("RESIDUAL_AUDIO_SHARED", REPO.parent / "shared")) / "data" / "esc50-fold4" / "audio"
    if not folder.is_dir():
        return None
    import soundfile as sf
    from scipy.signal import resample_poly

    from residual_audio.models.laion import log_mel

    clips = []
    for path in sorted(folder.glob("*.wav"))[:n]:
        x, _ = sf.read(path, dtype="float32")
        x = resample_poly(x, 160, 147).astype(np.float32)
        x = np.pad(np.tile(x, 480000 // len(x)), (0, 480000 - len(x) * (480000 // len(x))))
        x = (np.clip(x, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32767
        clips.append(x)
    if len(clips) < n:
        return None
    return log_mel(model, torch.from_numpy(np.stack(clips))).numpy()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(args) -> dict:
    from residual_audio.models.laion import audio_embedding_from_mel, build_model
    from residual_audio.models.device import resolve_device
    from residual_audio.stages.extract import HeadExtractor

    device = resolve_device(args.device)
    model = build_model(args.variant)
    mel = shared_mels(model, args.clips)
    source = "esc50-fold4" if mel is not None else "random log-mels"
    mel = torch.from_numpy(mel if mel is not None else random_mels(args.clips)).to(device)
    model = model.to(device)
    runners = {
        "plain": lambda: audio_embedding_from_mel(model, mel),
        "pooled": HeadExtractor(model, ["pre", "post"]),
        "full": HeadExtractor(model, ["pre", "post", "direct"]),
    }
    times = {k: [] for k in runners}
    with torch.no_grad():
        for name, fn in runners.items():  # warm-up
            fn(mel) if name != "plain" else fn()
        for _ in range(args.repeats):  # interleaved, so that load changes hit all three alike
            for name, fn in runners.items():
                sync(device)
                t = time.perf_counter()
                fn(mel) if name != "plain" else fn()
                sync(device)
                times[name].append(time.perf_counter() - t)
    rate = {k: args.clips / statistics.median(v) for k, v in times.items()}
    return {"device": str(device), "variant": args.variant, "clips": args.clips, "repeats": args.repeats,
            "source": source, "clips_per_s": rate,
            "ratio_pooled": rate["pooled"] / rate["plain"], "ratio_full": rate["full"] / rate["plain"]}


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: write 5 to clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_child(args) -> None:
    """Extract `args.rss_child` random clips to a store; print peak RSS before and after."""
    import zarr

    from residual_audio.models.laion import build_model, mel_fingerprint
    from residual_audio.stages.extract import extract

    n = args.rss_child
    model = build_model(args.variant)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        from residual_audio.data.stores import seal

        store = Path(tmp) / "mel.zarr"
        g = zarr.open_group(store, mode="w")
        mel = g.create_array("mel", shape=(n, 1001, 64), dtype="float32", chunks=(16, 1001, 64))
        for start in range(0, n, 16):
            mel[start:start + 16] = random_mels(min(16, n - start), seed=start)
        ids = g.create_array("clip_id", shape=(n,), dtype=str, chunks=(n,))
        ids[:] = np.array([f"clip{i}" for i in range(n)], dtype=object)
        g.create_array("label", data=np.zeros(n, np.int64), chunks=(n,))
        g.create_array("fold", data=np.ones(n, np.int64), chunks=(n,))
        g.attrs.update(classes=["noise"], mel_sha256=mel_fingerprint(model), dataset="bench")
        seal(g)
        gc.collect()
        reset = reset_peak_rss()  # building the model has its own, higher, peak
        before = status_mib("VmRSS")
        t = time.perf_counter()
        out = extract(model, store, Path(tmp) / "heads.zarr", batch_size=args.batch_size, device=args.device)
        elapsed = time.perf_counter() - t
        peak = status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
        files = sum(1 for p in out.rglob("*") if p.is_file())
    print(json.dumps({"clips": n, "rss_before_mib": before, "peak_rss_mib": peak, "seconds": elapsed,
                      "store_mib": size, "store_files": files}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--variant", default="tiny", choices=["tiny", "base"])
    ap.add_argument("--clips", type=int, default=8, help="clips in the timed batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16, help="batch size of the store extraction (RSS runs)")
    ap.add_argument("--rss", default="100,400", help="clip counts for the peak-RSS runs ('' to skip)")
    ap.add_argument("--tmp", default=None, help="folder for the temporary stores")
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args)
        return
    r = throughput(args)
    print(f"device {r['device']}, HTSAT-{r['variant']}, random weights, {r['clips']} clips ({r['source']}), "
          f"median of {r['repeats']}")
    for name, label in [("plain", "plain forward (LAION)"), ("pooled", "ours, pooled heads"),
                        ("full", "ours, full extraction")]:
        print(f"  {label:<24} {r['clips_per_s'][name]:8.2f} clips/s")
    print(f"  ratio pooled/plain  {r['ratio_pooled']:.3f}  (target >= 0.9)")
    print(f"  ratio full/plain    {r['ratio_full']:.3f}  (target >= 0.5)")
    for n in [int(x) for x in args.rss.split(",") if x.strip()]:
        cmd = [sys.executable, __file__, "--rss-child", str(n), "--device", args.device, "--variant", args.variant,
               "--batch-size", str(args.batch_size)] + (["--tmp", args.tmp] if args.tmp else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  extract {n:4d} clips to a store: peak RSS during extraction {m['peak_rss_mib']:6.0f} MiB "
              f"(+{m['peak_rss_mib'] - m['rss_before_mib']:.0f} over the {m['rss_before_mib']:.0f} MiB before it), "
              f"{m['seconds']:.1f} s, "
              f"store {m['store_mib']:.0f} MiB in {m['store_files']} files")


if __name__ == "__main__":
    main()
