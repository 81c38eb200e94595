"""Write a small folder dataset of synthetic tones (<root>/<class>/*.wav) for offline smoke runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf


def make(root: Path, classes: int = 4, per_class: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"tone{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sr = (44100, 22050, 16000, 48000)[i % 4]
            t = np.arange(int(sr * 5)) / sr
            x = 0.3 * np.sin(2 * np.pi * 200 * (c + 1) * t) + 0.02 * rng.standard_normal(len(t))
            sf.write(folder / f"tone{c}-{i}.wav", x.astype(np.float32), sr)
    return root.resolve()


if __name__ == "__main__":
    print(make(Path(sys.argv[1] if len(sys.argv) > 1 else "tones")))
