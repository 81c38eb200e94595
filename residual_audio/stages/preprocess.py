"""Turn a dataset's clips into one zarr store of model-ready log-mels plus a clip table.

The store is sharded (few files), deterministic (byte-identical on re-run, so DVC does
not re-run downstream stages), and written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

from ..core import logs
from ..core.io import atomic_path
from ..core.params import ParamError, get
from ..data import audio, datasets
from ..data.fetch import original_source
from ..data.paths import MEL_DIR, MODELS_DIR, RAW_DIR
from ..data.stores import seal
from ..models import checkpoints
from ..models.checkpoints import MelFrontEnd, checkpoint_from

FRONT_ENDS = ("exact", "laion_api")  # preprocess.front_end
CLIP_COLUMNS = ["clip_id", "path", "label", "label_name", "fold", "duration", "orig_sr"]
WARNING_RANDOM = "RANDOM WEIGHTS: not a pretrained model; numbers are for testing the pipeline only"


def _codecs():
    return [ZstdCodec(level=3)]


def create_table_array(group, name: str, values, chunk: int = 4096):
    """A small 1-d array (ids, labels, folds), written whole."""
    values = np.asarray(values)
    dtype = str if values.dtype.kind in "UO" else values.dtype
    arr = group.create_array(name, shape=values.shape, dtype=dtype, chunks=(min(chunk, max(len(values), 1)),),
                             compressors=_codecs() if dtype is not str else "auto")
    arr[:] = values
    return arr


def write_clip_table(clips, infos, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CLIP_COLUMNS)
    for clip, info in zip(clips, infos):
        w.writerow([clip.clip_id, portable_path(clip.path), clip.label, clip.label_name, clip.fold,
                    f"{info['duration']:.6f}", info["orig_sr"]])
    path.write_text(buf.getvalue())


def portable_path(path) -> str:
    """The clip's path relative to the working directory when below it, so tables diff across machines."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def load_wave(path, audio_rate: int, clip_samples: int, quantize: bool, fill: str, crop, front_end: str,
              min_seconds: float) -> tuple[np.ndarray, dict, float, float]:
    """One clip decoded, checked, resampled to `audio_rate` and padded or cropped to `clip_samples`:
    (wave, {orig_sr, duration}, decode seconds, resample seconds). A plain function of plain values, so that
    a pool of worker processes can run it; the same numbers whichever process does."""
    t0 = time.perf_counter()
    x, sr = audio.decode(path)
    audio.check_duration(path, len(x), sr, min_seconds)
    info = {"orig_sr": sr, "duration": len(x) / sr}
    t1 = time.perf_counter()
    x = audio.load_laion_api(path) if front_end == "laion_api" else audio.resample(x, sr, audio_rate)
    x = audio.check_audible(path, audio.quantize_int16(x) if quantize else x)
    x = audio.fit_length(x, clip_samples, crop, fill)
    return x, info, t1 - t0, time.perf_counter() - t1


def _pool(workers: int, n: int):
    """A process pool for decoding and resampling, or None to do it in this process (one worker, or too few
    clips to pay for starting the pool)."""
    if workers <= 1 or n < MIN_POOL_CLIPS:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


MIN_POOL_CLIPS = 32


def resolve_workers(value) -> int:
    """`preprocess.workers`: `auto` is the machine's cores."""
    return max(1, os.cpu_count() or 1) if value == "auto" else int(value)


def preprocess(
    clips,
    classes: list[str],
    front: MelFrontEnd,
    store_path: str | Path,
    table_path: str | Path,
    *,
    dataset: str,
    weights: str,
    crop: str | int = "start",
    front_end: str = "exact",
    batch_size: int = 16,
    shard_clips: int = 64,
    attrs: dict | None = None,
    progress: bool = True,
    min_seconds: float = audio.MIN_SECONDS,
    origin=None,
    workers: int = 1,
) -> dict:
    """Decode, resample, pad/crop and log-mel every clip into `store_path`; return stage timings (s).

    `origin(path)` names a clip's original file (the user's source) in audio errors.
    `front_end`: 'exact' (soundfile, exact-length polyphase resampling) or 'laion_api' (the
    file loaded and resampled as LAION's `get_audio_embedding_from_filelist` does).
    `workers` > 1 decodes and resamples in that many processes, one shard at a time in clip order, so the
    store is byte-identical to the one-process run and memory stays bounded by the shard; the log-mel runs
    here, in batches."""
    if front_end not in FRONT_ENDS:
        raise ValueError(f"front_end must be one of {FRONT_ENDS}, not {front_end!r}")
    if front_end == "laion_api" and (front.audio_rate, front.clip_samples) != (audio.SAMPLE_RATE, audio.CLIP_SAMPLES):
        raise ParamError(f"params: 'preprocess.front_end' is laion_api, which loads audio as LAION's API does "
                         f"({audio.SAMPLE_RATE} Hz, 10 s), but this model's front end takes {front.audio_rate} Hz, "
                         f"{front.clip_samples} samples; use 'exact'")
    if not clips:
        raise ValueError(f"{dataset}: no clips to preprocess")
    store_path, table_path = Path(store_path), Path(table_path)
    timings = defaultdict(float)
    n = len(clips)
    frames, mels = front(torch.zeros(1, front.clip_samples)).shape[1:]
    infos = []
    wave_of = partial(load_wave, audio_rate=front.audio_rate, clip_samples=front.clip_samples, quantize=front.quantize,
                      fill=front.fill, crop=crop, front_end=front_end, min_seconds=min_seconds)
    pool = _pool(workers, n)
    with contextlib.ExitStack() as stack, atomic_path(store_path) as tmp_store, atomic_path(table_path) as tmp_table:
        if pool is not None:
            stack.enter_context(pool)
        group = zarr.open_group(tmp_store, mode="w", zarr_format=3)
        shard = (min(shard_clips, n), frames, mels)
        mel_arr = group.create_array("mel", shape=(n, frames, mels), dtype="float32", chunks=(1, frames, mels),
                                     shards=shard, compressors=_codecs(), fill_value=0.0)
        bar = logs.progress(total=n, desc=f"preprocess {dataset}", unit="clips", disable=not progress or None)
        for start in range(0, n, shard[0]):
            part = clips[start : start + shard[0]]
            out = np.empty((len(part), frames, mels), dtype=np.float32)
            paths = [clip.path for clip in part]
            try:
                loaded = pool.map(wave_of, paths, chunksize=4) if pool is not None else map(wave_of, paths)
                for b in range(0, len(part), batch_size):
                    waves = []
                    for _ in part[b : b + batch_size]:
                        x, info, t_decode, t_resample = next(loaded)
                        infos.append(info)
                        timings["decode"] += t_decode
                        timings["resample"] += t_resample
                        waves.append(x)
                    t0 = time.perf_counter()
                    out[b : b + len(waves)] = front(torch.from_numpy(np.stack(waves))).numpy()
                    timings["mel"] += time.perf_counter() - t0
                    bar.update(len(waves))
            except audio.AudioError as exc:
                if origin is None:
                    raise
                message = str(exc)
                bad = next((p for p in paths if str(p) in message), None)
                raise audio.AudioError(message.replace(str(bad), origin(bad), 1) if bad is not None else message) from None
            t0 = time.perf_counter()
            mel_arr[start : start + len(part)] = out
            timings["write"] += time.perf_counter() - t0
        bar.close()
        create_table_array(group, "clip_id", [c.clip_id for c in clips])
        create_table_array(group, "label", np.array([c.label for c in clips], dtype=np.int64))
        create_table_array(group, "fold", np.array([c.fold for c in clips], dtype=np.int64))
        meta = {
            "dataset": dataset,
            "classes": list(classes),
            "mel_sha256": front.fingerprint(),
            "weights": weights,
            "family": front.family,
            "audio": front.settings(),
            "crop": crop,
            "fill": front.fill,
            "front_end": front_end,
        }
        if weights == "random":
            meta["warning"] = WARNING_RANDOM
        meta.update(attrs or {})
        group.attrs.update(meta)
        seal(group)  # complete: readers check every chunk is there
        write_clip_table(clips, infos, Path(tmp_table))
    return dict(timings)


def run(params: dict, name: str, workdir: str | Path = ".") -> Path:
    """The `preprocess` stage of dataset `name`: data/raw/<name>/ into data/mel/<name>.zarr."""
    workdir = Path(workdir)
    config = get(params, f"data.{name}")
    options = {k: v for k, v in config.items() if k not in ("source", "sha256", "limit")}
    limit = config["limit"]
    seed = get(params, "seed")
    crop = get(params, "preprocess.crop")
    front_end = get(params, "preprocess.front_end")
    batch_size = get(params, "preprocess.batch_size")
    min_seconds = get(params, "preprocess.min_seconds")
    workers = resolve_workers(get(params, "preprocess.workers"))

    clips, classes = datasets.list_clips(name, workdir / RAW_DIR / name, **options)
    clips = datasets.select(clips, limit, seed)
    checkpoint = checkpoint_from(workdir / MODELS_DIR)
    variant = get(params, "model.variant")
    front = checkpoints.front_end(checkpoint, variant)
    weights = "random" if checkpoint == "random" else "pretrained"
    out = workdir / MEL_DIR
    used = {"dataset": name, "limit": limit, "seed": seed, "crop": crop, "min_seconds": min_seconds,
            "front_end": front_end}
    if weights == "random":
        print(f"preprocess: {WARNING_RANDOM}", file=sys.stderr)
    raw = workdir / RAW_DIR / name
    timings = preprocess(clips, classes, front, out / f"{name}.zarr", out / f"{name}.csv", dataset=name,
                         weights=weights, crop=crop, front_end=front_end, batch_size=batch_size,
                         attrs={"params": used}, min_seconds=min_seconds,
                         origin=lambda path: original_source(raw, path), workers=workers)
    total = sum(timings.values())
    print(f"preprocess: {len(clips)} clips of {name}, {len(classes)} classes; "
          + ", ".join(f"{k} {v / total:.0%}" for k, v in timings.items()), file=sys.stderr)
    return out / f"{name}.zarr"
