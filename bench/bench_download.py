"""Time the download stage's local paths on the real ESC-50 fold-4 copy (../shared/data/esc50-fold4).

Prints seconds for: copying the folder (hard links), unpacking it from a zip, the no-op
rerun, and reading the clip list. Run: python bench/bench_download.py
"""

import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from residual_audio.data.datasets import list_clips  # noqa: E402
from residual_audio.data.fetch import fetch_dataset  # noqa: E402

SHARED = Path(os.environ.get("RESIDUAL_AUDIO_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SOURCE = SHARED / "data" / "esc50-fold4"


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label:<40s} {time.perf_counter() - start:8.3f} s")
    return result


def main() -> None:
    if not SOURCE.is_dir():
        sys.exit(f"{SOURCE} is absent")
    size = sum(p.stat().st_size for p in SOURCE.rglob("*") if p.is_file())
    print(f"source: {SOURCE} ({size / 2**20:.1f} MiB)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        timed("copy folder (hard links) + check", lambda: fetch_dataset(str(SOURCE), tmp / "dir", check_dataset="esc50"))
        timed("rerun, same source (no-op)", lambda: fetch_dataset(str(SOURCE), tmp / "dir", check_dataset="esc50"))
        archive = tmp / "esc50.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
            for p in sorted(SOURCE.rglob("*")):
                z.write(p, Path("ESC-50-master") / p.relative_to(SOURCE))
        timed("unpack zip + sha256 + check", lambda: fetch_dataset(str(archive), tmp / "zip", check_dataset="esc50"))
        clips = timed("list_clips", lambda: list_clips("esc50", tmp / "zip")[0])
        print(f"clips: {len(clips)}")
        shutil.rmtree(tmp / "dir")


if __name__ == "__main__":
    main()
