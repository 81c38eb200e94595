"""What the `train`, `ablation` and `fewshot` stages share: the fold params and splits, the heads
store, the encoder context of inject-mode methods, and `method_context`, which meets every listed
method's needs (audio encoder, text encoder) once, before any method runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.io import sha256_file
from ..core.params import ParamError, get
from ..data.mel import MelStoreError, open_mel_store
from ..data.paths import HEADS_DIR, MEL_DIR, MODELS_DIR
from ..data.units import read_units
from ..evaluation.zeroshot import TextCacheError
from ..methods.residual.inject import read_head_outputs
from ..models.checkpoints import (
    checkpoint_from,
    identity_file,
    load_model,
    load_tokenizer,
    mel_fingerprint,
    own_tokenizer,
)
from ..models.device import resolve_device
from ..models.hooked import HookedHTSAT


@dataclass(frozen=True)
class FoldParams:
    """What the folds depend on: `seed` and `cv` (ablation reads no more)."""

    seed: int
    scheme: str
    k: int
    val_fraction: float

    @classmethod
    def read(cls, params: dict) -> "FoldParams":
        return cls(get(params, "seed"), get(params, "cv.scheme"), get(params, "cv.k"), float(get(params, "cv.val_fraction")))


@dataclass(frozen=True)
class AlignmentParams:
    datasets: list
    seed: int
    inject_layers: list
    scheme: str
    k: int
    val_fraction: float
    methods: tuple = ()
    device: str = "auto"  # train.device, for methods that run the encoder
    variant: str | None = None  # model.variant, for methods that run the encoder

    @classmethod
    def read(cls, params: dict, dataset: str) -> "AlignmentParams":
        f = FoldParams.read(params)
        return cls([dataset], f.seed, list(get(params, "inject_layers")), f.scheme, f.k, f.val_fraction,
                   tuple(get(params, "methods")), get(params, "train.device"), get(params, "model.variant"))


def _store(dataset: str):
    return read_units(HEADS_DIR / f"{dataset}.zarr")


def _encoder_context(ds: str, variant: str, device: str) -> dict:
    """The shared resources of methods that run the encoder: the hooked model on its device and the mel array."""
    heads = read_head_outputs(HEADS_DIR / f"{ds}.zarr")
    mel_store = _mel_store(ds, heads)
    hooked, device = _encoder(ds, mel_store, variant, device, "train.device")
    return {"hooked": hooked, "device": device, "mel": mel_store["mel"],
            "weights": getattr(hooked.model, "weights", "")}


def _mel_store(ds: str, heads):
    """The dataset's mel store, checked to hold the heads store's clips in the same order, with the same classes."""
    mel_path = MEL_DIR / f"{ds}.zarr"
    mel_store = open_mel_store(mel_path)
    mel_ids = np.array([str(c) for c in mel_store["clip_id"][:]])
    if not np.array_equal(mel_ids, heads.clip_id):
        raise MelStoreError(f"{mel_path}: its clips differ from {heads.path}'s; rerun the 'extract' stage")
    if [str(c) for c in mel_store.attrs["classes"]] != list(heads.classes):
        raise MelStoreError(f"{mel_path}: its attribute 'classes' differs from {heads.path}'s (the labels would not "
                            "mean the same classes); rerun the 'extract' stage")
    return mel_store


def _encoder(ds: str, mel_store, variant, device: str, device_key: str):
    """The hooked encoder of data/models on `device`, checked against the mel store's mel settings."""
    device = resolve_device(device, device_key)
    model = load_model(checkpoint_from(MODELS_DIR), variant)
    if mel_store.attrs["mel_sha256"] != mel_fingerprint(model):
        raise MelStoreError(f"{MEL_DIR / f'{ds}.zarr'}: mel_sha256 does not match the model's mel extractor; rerun 'preprocess' and 'extract'")
    return HookedHTSAT(model.to(device)), device


def result_environment(store, device: str = "cpu") -> dict:
    """The environment a result of `store`'s dataset is made in, with the hashes of its clips and model."""
    from ..core.environment import clips_sha256, environment

    ids = store.clip_id if store.clip_id is not None else np.arange(store.n)
    return environment(device, dataset=store.attrs.get("dataset"), clips_sha256=clips_sha256(ids, store.label, store.fold),
                       checkpoint_sha256=store.checkpoint_sha256, family=store.attrs.get("family", "laion"),
                       weights=store.weights)


def _weights(store, text) -> str:
    """'random' if either the extraction or the text side came from random weights."""
    return "random" if "random" in (store.weights, text.weights) else store.weights


# --------------------------------------------------------------------------- what methods need

VALIDATION = "validation"  # in an estimator's `needs`: it selects hyper-parameters on a validation draw
ENCODER = "encoder"  # it runs the audio encoder (inject mode): the hooked model and the mel array
TEXT_ENCODER = "text_encoder"  # it runs the text encoder (prompt learning): the model and the tokenizer


def _text_encoder(params: dict, text, dataset: str, store) -> dict:
    """The model's text branch and the tokenizer, checked against the cached text side."""
    checkpoint = checkpoint_from(MODELS_DIR)
    model = load_model(checkpoint, get(params, "model.variant"))
    if model.weights != text.weights:
        raise TextCacheError(f"{MODELS_DIR}: {model.weights} weights, but the cached text side has {text.weights} "
                             "ones; rerun the 'text' stage")
    if text.checkpoint_sha256 and checkpoint != "random" and sha256_file(identity_file(checkpoint)) != text.checkpoint_sha256:
        raise TextCacheError(f"{checkpoint}: not the checkpoint the cached text side was built from; rerun 'text'")
    return {"model": model, "tokenizer": load_tokenizer(model, own_tokenizer(checkpoint) or MODELS_DIR / "tokenizer")}


def _audio_encoder(params: dict, text, dataset: str, store) -> dict:
    """The hooked audio encoder on `train.device` and the dataset's mel array (inject-mode methods)."""
    return _encoder_context(dataset, get(params, "model.variant"), get(params, "train.device"))


# need -> builder(params, text, dataset, store) returning the FoldData.context entries it provides
CONTEXT_BUILDERS = {TEXT_ENCODER: _text_encoder, ENCODER: _audio_encoder}


def method_context(estimators, params: dict, text, dataset: str, store, key: str = "methods") -> dict:
    """The shared resources every listed method needs (`Estimator.needs`), built once before any
    method runs: the same for `train` and `fewshot`. A need nothing provides is refused, naming `key`."""
    context: dict = {}
    for need in sorted({n for est in estimators for n in est.needs} - {VALIDATION}):
        if need not in CONTEXT_BUILDERS:
            raise ParamError(f"params: '{key}': nothing provides {need!r} to the methods")
        context.update(CONTEXT_BUILDERS[need](params, text, dataset, store))
    return context


def resume_inputs(store, text, context: dict) -> dict:
    """What every cached unit of `train` or `fewshot` depends on besides its own method, seed and clips
    (`core.resume`): the heads store's arrays and attributes, the text side, the device, and for methods
    that run an encoder the mel array and the tokenizer files."""
    inputs = {"store": {k: getattr(store, k) for k in ("units", "const", "embedding", "label", "fold", "unit_names",
                                                       "classes", "weights", "variant", "checkpoint_sha256", "attrs")},
              "text": text, "device": str(context.get("device", "cpu"))}
    if "mel" in context:
        inputs["mel"] = np.asarray(context["mel"][:])
    if "tokenizer" in context:
        folder = MODELS_DIR / "tokenizer"
        inputs["tokenizer"] = {f.name: sha256_file(f) for f in sorted(folder.glob("*")) if f.is_file()} if folder.is_dir() else None
    return inputs

