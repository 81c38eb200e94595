"""The `extract` stage: every head of HTS-AT, pooled and exactly decomposed, into a zarr store.

One hooked forward per batch yields everything: pooled per-head outputs before and after
the output projection, pooled residual streams, and the direct decomposition of the
embedding into units. Batches stream into sharded zarr arrays through fixed-size
buffers, so memory does not grow with the number of clips; the store is written to a
temporary path and renamed at the end.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import zarr

from ..core import logs
from ..core.io import atomic_path, sha256_file
from ..core.params import get
from ..data.mel import MelStoreError, open_mel_store
from ..data.paths import HEADS_DIR, MEL_DIR, MODELS_DIR
from ..data.stores import seal
from ..models.checkpoints import identity_file, joint_dim, load_model, mel_fingerprint, resolve_checkpoint
from ..models.decompose import DirectDecomposition, head_rows, pooled_head_outputs, unit_names
from ..models.device import resolve_device
from ..models.hooked import HookedHTSAT

REGIMES = ("pre", "post", "direct")
CHUNK_BYTES = 4 << 20  # a chunk is the unit of compression and of partial reads
SHARD_BYTES = 16 << 20  # a shard is one file and the unit of buffering: bounds memory (about 16 MiB per array)
COMPRESSOR = zarr.codecs.ZstdCodec(level=1, checksum=False)


# --------------------------------------------------------------------------- one batch


class HeadExtractor:
    """Everything the store holds, for one batch of log-mels, from one hooked forward."""

    def __init__(self, model, regimes=REGIMES):
        unknown = sorted(set(regimes) - set(REGIMES))
        if unknown:
            raise ValueError(f"unknown regime(s) {unknown}; known: {list(REGIMES)}")
        self.regimes = tuple(r for r in REGIMES if r in regimes)
        self.hooked = HookedHTSAT(model)
        self.arch = self.hooked.arch
        self.decomposition = DirectDecomposition(self.hooked) if "direct" in self.regimes else None

    def shapes(self) -> dict[str, tuple]:
        """Per-clip shape of every array, in storage order."""
        a = self.arch
        n_stages = len(a.depths)
        shapes = {"embedding": (a.widths[-1],), "audio_embed": (joint_dim(self.hooked.model),)}
        if "pre" in self.regimes:
            shapes["heads/pre"] = (a.n_heads, a.head_dim)
        if "post" in self.regimes:
            for s in range(n_stages):
                shapes[f"heads/post/stage{s}"] = (a.depths[s] * a.heads[s], a.widths[s])
        for s in range(n_stages):
            shapes[f"streams/block_in/stage{s}"] = (a.depths[s], a.widths[s])
        for s in range(n_stages):
            shapes[f"streams/stage_out/stage{s}"] = (a.widths[s],)
        if "direct" in self.regimes:
            shapes["direct/units"] = (len(unit_names(a)), a.widths[-1])
            shapes["direct/const"] = (a.widths[-1],)
        return shapes

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.arch
        n_stages = len(a.depths)
        kept: dict[str, torch.Tensor] = {}
        z_mean: dict[tuple, torch.Tensor] = {}
        block_in = [[None] * d for d in a.depths]
        stage_out = [None] * n_stages
        hooks = []

        def keep(t, name):
            kept[name] = t

        for s, depth in enumerate(a.depths):
            for b in range(depth):
                prefix = f"layers.{s}.blocks.{b}"

                def pool_in(t, name, s=s, b=b):
                    block_in[s][b] = t.mean(1)

                def pool_z(t, name, s=s, b=b):
                    z_mean[s, b] = t.mean(1)

                hooks += [(f"{prefix}.hook_resid_pre", pool_in), (f"{prefix}.attn.hook_z", pool_z)]
            last = f"layers.{s}.blocks.{depth - 1}.hook_resid_post"
            hooks.append((last, lambda t, name, s=s: stage_out.__setitem__(s, t.mean(1))))
        if self.decomposition is not None:
            hooks += [(name, keep) for name in self.decomposition.needed_hooks]

        out = self.hooked(mel, hooks=hooks)
        result = {"embedding": out["embedding"], "audio_embed": out["audio_embed"]}
        if "pre" in self.regimes:
            result["heads/pre"] = torch.cat([z_mean[s, b] for s, d in enumerate(a.depths) for b in range(d)], 1)
        if "post" in self.regimes:
            for s, layer in enumerate(self.hooked.branch.layers):
                result[f"heads/post/stage{s}"] = torch.cat(
                    [pooled_head_outputs(blk, z_mean[s, b]) for b, blk in enumerate(layer.blocks)], 1)
        for s in range(n_stages):
            result[f"streams/block_in/stage{s}"] = torch.stack(block_in[s], 1)
        for s in range(n_stages):
            result[f"streams/stage_out/stage{s}"] = stage_out[s]
        if self.decomposition is not None:
            parts = self.decomposition.contributions(kept)
            result["direct/units"] = parts["units"]
            result["direct/const"] = parts["const"]
        return result


# --------------------------------------------------------------------------- streaming writer


def layout(n: int, per_clip: tuple, itemsize: int) -> tuple[int, int]:
    """Clips per chunk and per shard: ~4 MiB chunks in ~16 MiB shard files, never more than n."""
    clip_bytes = max(1, math.prod(per_clip) * itemsize)
    chunk = max(1, min(n, CHUNK_BYTES // clip_bytes))
    per_shard = max(1, SHARD_BYTES // (chunk * clip_bytes))
    shard = chunk * min(per_shard, math.ceil(n / chunk))
    return chunk, shard


class ShardedWriter:
    """Appends batches along N to zarr arrays, writing each shard whole from a fixed-size buffer.

    Writing whole shards keeps the I/O linear in the data (no shard is re-read and rewritten)
    and the memory bounded by one shard per array, whatever the number of clips.
    """

    def __init__(self, group, n: int, shapes: dict[str, tuple], dtype=np.float32):
        self.n = n
        self.arrays, self.buffers, self.filled, self.start = {}, {}, {}, {}
        itemsize = np.dtype(dtype).itemsize
        for name, per_clip in shapes.items():
            chunk, shard = layout(n, per_clip, itemsize)
            self.arrays[name] = group.create_array(
                name, shape=(n, *per_clip), dtype=dtype, chunks=(chunk, *per_clip),
                shards=(shard, *per_clip), compressors=COMPRESSOR, fill_value=0,
            )
            self.buffers[name] = np.empty((shard, *per_clip), dtype=dtype)
            self.filled[name] = 0
            self.start[name] = 0

    def append(self, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            buf = self.buffers[name]
            done = 0
            while done < len(value):
                take = min(len(value) - done, len(buf) - self.filled[name])
                buf[self.filled[name]:self.filled[name] + take] = value[done:done + take]
                self.filled[name] += take
                done += take
                if self.filled[name] == len(buf):
                    self._flush(name)

    def _flush(self, name: str) -> None:
        k, start = self.filled[name], self.start[name]
        if k:
            if start + k > self.n:
                raise RuntimeError(f"{name}: more clips than the {self.n} announced")
            self.arrays[name][start:start + k] = self.buffers[name][:k]
            self.start[name] = start + k
            self.filled[name] = 0

    def close(self) -> None:
        for name in self.arrays:
            self._flush(name)
            if self.start[name] != self.n:
                raise RuntimeError(f"{name}: {self.start[name]} clips written, {self.n} expected")


# --------------------------------------------------------------------------- the stage


def ordered_regimes(regimes) -> list[str]:
    """`regimes` (names the schema checked) in the store's order."""
    return [r for r in REGIMES if r in regimes]


def extract(model, mel_path, out_path, *, batch_size: int = 16, device: str = "auto",
            regimes=REGIMES, checkpoint_sha256: str = "random", params: dict | None = None) -> Path:
    """Write the heads store for the mel store at `mel_path`; returns `out_path`."""
    regimes = ordered_regimes(regimes)
    dev = resolve_device(device)
    mel_path, out_path = Path(mel_path), Path(out_path)
    source = open_mel_store(mel_path)
    fingerprint = mel_fingerprint(model)
    if source.attrs["mel_sha256"] != fingerprint:
        raise MelStoreError(
            f"{mel_path}: mel_sha256 {source.attrs['mel_sha256']!r} does not match the model's mel extractor "
            f"({fingerprint!r}); the checkpoint and the mel settings disagree: re-run preprocess with this model"
        )
    if model.training:
        raise RuntimeError("the frozen model must stay in eval() mode")
    model = model.to(dev)
    extractor = HeadExtractor(model, regimes)
    arch = extractor.arch
    mel = source["mel"]
    n = mel.shape[0]
    attrs = {
        "dataset": source.attrs.get("dataset", mel_path.stem),
        "family": getattr(model, "family", "laion"),
        "variant": getattr(model, "variant", None),
        "checkpoint_sha256": checkpoint_sha256,
        "weights": getattr(model, "weights", "pretrained"),
        "mel_sha256": fingerprint,
        "classes": list(source.attrs["classes"]),
        "regimes": list(regimes),
        "architecture": {"depths": list(arch.depths), "heads": list(arch.heads),
                         "widths": list(arch.widths), "head_dim": arch.head_dim},
        "heads": head_rows(arch),
        "units": unit_names(arch),
        "params": params or {},
    }
    with atomic_path(out_path) as tmp, torch.no_grad():
        group = zarr.open_group(tmp, mode="w", attributes=attrs)
        clip_id = group.create_array("clip_id", shape=(n,), dtype=str, chunks=(n,), compressors=COMPRESSOR)
        clip_id[:] = np.asarray(source["clip_id"][:], dtype=object)
        for key in ("label", "fold"):
            group.create_array(key, data=np.asarray(source[key][:], dtype=np.int64), chunks=(n,), compressors=COMPRESSOR)
        writer = ShardedWriter(group, n, extractor.shapes())
        with logs.progress(total=n, desc=f"extract {mel_path.name}", unit="clips") as bar:
            for start in range(0, n, batch_size):
                batch = torch.from_numpy(np.asarray(mel[start:start + batch_size], dtype=np.float32)).to(dev)
                values = extractor(batch)
                writer.append({k: v.float().cpu().numpy() for k, v in values.items()})
                bar.update(len(batch))
        writer.close()
        seal(group)  # complete: readers check every chunk is there
    return out_path


def run(params: dict, dataset: str, workdir: str | os.PathLike = ".") -> Path:
    """The `extract` stage of one dataset: data/mel/<dataset>.zarr -> data/heads/<dataset>.zarr."""
    workdir = Path(workdir)
    batch_size = get(params, "extract.batch_size")
    device = get(params, "extract.device")
    regimes = ordered_regimes(get(params, "extract.regimes"))
    resolve_device(device)
    mel_path = workdir / MEL_DIR / f"{dataset}.zarr"
    open_mel_store(mel_path)  # fail before the model is built
    checkpoint = resolve_checkpoint(get(params, "model.checkpoint"), workdir / MODELS_DIR)
    variant = get(params, "model.variant")
    if checkpoint == "random":
        model, sha = load_model("random", variant=variant), "random"
    else:
        model, sha = load_model(checkpoint, variant=variant), sha256_file(identity_file(checkpoint))
    used = {"extract": {"batch_size": batch_size, "device": device, "regimes": regimes},
            "model": {"checkpoint": str(get(params, "model.checkpoint")), "variant": variant}}
    return extract(model, mel_path, workdir / HEADS_DIR / f"{dataset}.zarr",
                   batch_size=batch_size, device=device, regimes=regimes, checkpoint_sha256=sha, params=used)
