"""How transformers' ClapFeatureExtractor log-mel differs from LAION's torchlibrosa log-mel.

    python bench/bench_hf_mel.py [--clips 8] [--data ../shared/data/esc50-fold4]

Both get the same model-ready 48 kHz, 10 s waveform (our `exact` front end: resampled,
int16-quantised, repeat-padded), so only the mel computation differs. The pipeline's
log-mel is LAION's frozen torchlibrosa extractor (slaney mel scale and area norm, 50-14000 Hz,
10·log10 power, reflect-padded centred STFT, float32 conv STFT). The feature extractor is run
with LAION's settings for unfused models (truncation `rand_trunc`, frequency_min 50, which selects
its librosa-style slaney filters) and with its class defaults (truncation `fusion`, frequency_min 0:
HTK mel scale, unnormalised filters). Prints the shape and the dB differences per setting.
Without ../shared, uses generated clips.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.data import audio  # noqa: E402
from residual_audio.models import laion as clap


def waveforms(data: Path, n: int) -> tuple[list[np.ndarray], str]:
    paths = sorted((data / "audio").glob("*.wav"))[:: max(1, 400 // n)][:n] if data.is_dir() else []
    if paths:
        return [audio.prepare(p)[0] for p in paths], f"{len(paths)} real ESC-50 clips from {data}"
    rng = np.random.default_rng(0)
    t = np.arange(audio.CLIP_SAMPLES) / audio.SAMPLE_RATE
    out = [audio.quantize_int16((0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
           for f in np.geomspace(100, 8000, n)]
    return out, f"{n} generated tones in noise"


def main() -> None:
    from transformers import ClapFeatureExtractor

    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=repo.parent / "shared" / "data" / "esc50-fold4")
    ap.add_argument("--clips", type=int, default=8)
    args = ap.parse_args()
    waves, what = waveforms(args.data, args.clips)
    front = clap.MelFrontEnd(clap.model_config("tiny")["audio_cfg"])
    ours = front(torch.from_numpy(np.stack(waves))).numpy().astype(np.float64)  # [B, 1001, 64]
    settings = {
        "rand_trunc, fmin 50 (LAION's unfused settings)": dict(truncation="rand_trunc", frequency_min=50),
        "fusion, fmin 0 (class defaults)": dict(truncation="fusion", frequency_min=0),
    }
    print(f"{what}; ours: torchlibrosa log-mel {ours.shape[1:]}")
    print("| feature extractor | shape | max abs dB diff | mean abs dB diff | mean diff (HF − ours) dB | corr |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, kw in settings.items():
        fe = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, hop_length=480, fft_window_size=1024,
                                  frequency_max=14000, padding="repeatpad", **kw)
        feats = fe(list(waves), sampling_rate=48000, return_tensors="np")["input_features"]
        theirs = feats[:, 0].astype(np.float64)  # [B, 1, 1001, 64] (fusion: 4 stacked views, the first is the whole clip)
        d = theirs - ours
        corr = np.corrcoef(theirs.ravel(), ours.ravel())[0, 1]
        print(f"| {name} | {tuple(feats.shape[1:])} | {np.abs(d).max():.4g} | {np.abs(d).mean():.4g} | "
              f"{d.mean():+.4g} | {corr:.6f} |")


if __name__ == "__main__":
    main()
