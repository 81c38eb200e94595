"""The exported file: one safetensors file whose arrays are the method's fitted state and the text
side (class vectors and the frozen projection), and whose metadata holds one JSON document: the
method and its hyper-parameters, the classes, and what the model must be for the file to apply
(family, variant, the checkpoint's sha256, the unit names, the front end's fingerprint and crop).
Nothing in it is code: safetensors holds plain arrays, and the JSON is read as data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.io import atomic_path
from ..evaluation.results import _jsonable
from ..evaluation.zeroshot import PROJECTION_KEYS, TextSide

FORMAT = "residual_audio.export/1"
META_KEY = "residual_audio"
REQUIRED = ("format", "method", "hyper", "dataset", "classes", "family", "variant", "checkpoint", "weights",
            "unit_names", "front_end", "text")


class BundleError(ValueError):
    """An exported file that cannot be used, said in one line naming the file."""


@dataclass
class Bundle:
    meta: dict
    state: dict  # the method's `state()` arrays
    text: TextSide


def write_bundle(path: str | os.PathLike, meta: dict, state: dict, text: TextSide) -> Path:
    from safetensors.numpy import save_file

    tensors = {f"state.{k}": np.ascontiguousarray(np.asarray(v)) for k, v in state.items()}
    tensors["text.class_embeddings"] = np.ascontiguousarray(text.class_embeddings)
    for k in PROJECTION_KEYS[text.projection["kind"]]:
        tensors[f"text.projection.{k}"] = np.ascontiguousarray(text.projection[k])
    meta = {**meta, "format": FORMAT,
            "text": {"logit_scale": float(text.logit_scale), "kind": text.projection["kind"], "weights": text.weights,
                     "templates": list(text.templates), "checkpoint_sha256": text.checkpoint_sha256},
            "scalars": sorted(k for k, v in state.items() if np.ndim(v) == 0)}
    for k, v in tensors.items():
        if v.dtype.kind not in "biuf":
            raise BundleError(f"{path}: state array {k} has dtype {v.dtype}, which safetensors cannot hold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.reshape(1) if v.ndim == 0 else v for k, v in tensors.items()}, str(tmp),
                  metadata={META_KEY: json.dumps(meta, default=_jsonable)})
    return path


def read_bundle(path: str | os.PathLike) -> Bundle:
    """The bundle at `path`, checked: a safetensors file, our format, every field and array there, all finite."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: not found (write one with `residual-audio export <dataset> <method>`)")
    try:
        with safe_open(str(path), "np") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise BundleError(f"{path}: no residual_audio header; not a file that `residual-audio export` wrote") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                          f"this version reads {FORMAT!r}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise BundleError(f"{path}: header lacks {', '.join(missing)}")
    for k, v in tensors.items():  # ±inf is legitimate (a probe's intercept for a class it never saw), NaN is not
        if v.dtype.kind == "f" and np.isnan(v).any():
            raise BundleError(f"{path}: {k} holds NaN")
    t = meta["text"]
    kind = t.get("kind")
    if kind not in PROJECTION_KEYS:
        raise BundleError(f"{path}: projection kind {kind!r} is none of {', '.join(PROJECTION_KEYS)}")
    names = ["text.class_embeddings", *(f"text.projection.{k}" for k in PROJECTION_KEYS[kind])]
    absent = [n for n in names if n not in tensors]
    if absent:
        raise BundleError(f"{path}: lacks {', '.join(absent)}")
    emb = tensors["text.class_embeddings"]
    if emb.ndim != 2 or len(emb) != len(meta["classes"]):
        raise BundleError(f"{path}: {emb.shape[0] if emb.ndim else 0} class vectors for {len(meta['classes'])} classes")
    text = TextSide(list(meta["classes"]), emb, float(t["logit_scale"]),
                    {"kind": kind, **{k: tensors[f"text.projection.{k}"] for k in PROJECTION_KEYS[kind]}},
                    t["weights"], list(t["templates"]), t.get("checkpoint_sha256", ""))
    scalars = set(meta.get("scalars", []))
    state = {k[len("state."):]: (v.reshape(()) if k[len("state."):] in scalars else v)
             for k, v in tensors.items() if k.startswith("state.")}
    return Bundle(meta, state, text)
