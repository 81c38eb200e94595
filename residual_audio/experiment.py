"""The alignment stages (text, train, ablation) as functions of params.yaml.

Each stage validates every parameter it uses before touching any output, computes
everything in memory and writes its outputs atomically, so a bad value or a failure
leaves the previous outputs exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import alignment as al
from . import hf
from .ablation import direct_total_correlation, fisher_correlation, mean_ablation, total_ablation
from .clap import checkpoint_from, load_model, load_tokenizer, mel_fingerprint
from .estimators import FoldData, build
from .extract import MelStoreError, open_mel_store, resolve_device
from .hooked import HookedHTSAT
from .io import atomic_path, sha256_file, write_json
from .live import TrainingLog
from .live import enabled as live_enabled
from .params import ParamError, check, get
from .protocol import SCHEMES, Split, make_splits
from .inject import read_head_outputs
from .residual import check_mode
from .units import parse_unit, read_units
from .zeroshot import DEFAULT_TEMPLATES, build_text_side, load_text_side, save_text_side

HEADS_DIR, TEXT_DIR, RESULTS_DIR = Path("data/heads"), Path("data/text"), Path("data/results")
MEL_DIR = Path("data/mel")  # written by the preprocess stage; read by methods that run the encoder
MODELS_DIR = Path("data/models")  # written by the download stage: checkpoint.pt, tokenizer/


@dataclass(frozen=True)
class FoldParams:
    """What the folds depend on: `seed` and `cv` (ablation reads no more)."""

    seed: int
    scheme: str
    k: int
    val_fraction: float

    @classmethod
    def read(cls, params: dict) -> "FoldParams":
        seed = get(params, "seed", 0)
        check(isinstance(seed, int), "seed", f"must be an integer, got {seed!r}")
        scheme, k = get(params, "cv.scheme", "official"), get(params, "cv.k", 5)
        check(scheme in SCHEMES, "cv.scheme", f"must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        check(isinstance(k, int) and k >= 2, "cv.k", f"must be an integer >= 2, got {k!r}")
        val = get(params, "cv.val_fraction", 0.1)
        check(isinstance(val, (int, float)) and 0 <= val < 1, "cv.val_fraction", f"must be in [0, 1), got {val!r}")
        return cls(seed, scheme, k, float(val))


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
        check(isinstance(dataset, str) and dataset, "datasets", f"must hold dataset names, got {dataset!r}")
        folds = FoldParams.read(params)
        seed, scheme, k, val = folds.seed, folds.scheme, folds.k, folds.val_fraction
        inject = get(params, "inject_layers", [0, 1, 2, 3])
        check_mode("direct", inject)
        methods = get(params, "methods", list(al.DEFAULT_METHODS))
        check(isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods)
              and len(set(methods)) == len(methods), "methods", f"must be a non-empty list of distinct method names, got {methods!r}")
        device = get(params, "train.device", "auto")
        check(device in ("auto", "cpu", "cuda"), "train.device", f"must be auto, cpu or cuda, got {device!r}")
        return cls([dataset], seed, list(inject), scheme, k, float(val), tuple(methods), device,
                   get(params, "model.variant", None))


def splits_for(store, p: FoldParams | AlignmentParams, warn: bool = True) -> list[Split]:
    return make_splits(store.label, store.fold, p.scheme, p.k, p.seed, p.val_fraction, warn=warn)


def _store(dataset: str):
    return read_units(HEADS_DIR / f"{dataset}.zarr")


# --------------------------------------------------------------------------- text


def text_stage(params: dict, dataset: str) -> None:
    """Class vectors, temperature and frozen audio projection per dataset → data/text/<dataset>.npz."""
    import zarr


    datasets = [dataset]
    checkpoint = str(get(params, "model.checkpoint", "random"))
    variant = get(params, "model.variant", "tiny")
    tokenizer = get(params, "model.tokenizer", None)
    templates = get(params, "zeroshot.templates", list(DEFAULT_TEMPLATES))
    if isinstance(templates, str):
        templates = [templates]
    check(isinstance(templates, list) and templates and all(isinstance(t, str) and "{label}" in t for t in templates),
          "zeroshot.templates", "must be a non-empty list of strings, each with a '{label}' placeholder")
    random = checkpoint.strip().lower() == "random"
    folder = MODELS_DIR / hf.FOLDER  # the download stage's ClapModel folder, else its checkpoint.pt
    checkpoint_file = "random" if random else str(folder if hf.is_folder(folder) else MODELS_DIR / "checkpoint.pt")
    own_tokenizer = None if random else hf.tokenizer_dir(checkpoint_file)  # a ClapModel folder's own files
    if own_tokenizer is None and (tokenizer is None or not str(tokenizer).strip()):
        raise ParamError(
            "params: 'model.tokenizer' is empty: the zero-shot class vectors need the roberta-base tokenizer "
            f"(vocab.json + merges.txt){', with random weights too' if checkpoint.strip().lower() == 'random' else ''}"
        )
    classes = {}
    for ds in datasets:
        path = HEADS_DIR / f"{ds}.zarr"
        if not path.exists():
            raise FileNotFoundError(f"{path}: extraction store not found")
        classes[ds] = list(zarr.open_group(str(path), mode="r").attrs["classes"])
    tok = load_tokenizer(own_tokenizer or MODELS_DIR / "tokenizer")
    model = load_model(checkpoint_file, variant)
    sha = "" if random else sha256_file(hf.identity_file(checkpoint_file))
    sides = {ds: build_text_side(model, tok, classes[ds], templates, sha) for ds in datasets}
    for ds, side in sides.items():
        save_text_side(TEXT_DIR / f"{ds}.npz", side)


# --------------------------------------------------------------------------- train


def train_stage(params: dict, dataset: str) -> Path:
    """Every method of `methods` on every fold of `dataset` → data/results/<dataset>/<method>.npz."""
    return train_dataset(params, dataset)


def train_dataset(params: dict, dataset: str) -> Path:
    """One loop over folds and methods for one dataset; every method is built (its params checked)
    before any work, and the results directory is replaced atomically at the end."""
    p = AlignmentParams.read(params, dataset)
    estimators = {m: build(m, params) for m in p.methods}  # unknown names and bad hyper-parameters fail here
    store = _store(dataset)
    text = load_text_side(TEXT_DIR / f"{dataset}.npz", store.classes)
    splits = splits_for(store, p)
    context: dict = {}
    if any("encoder" in est.needs for est in estimators.values()):
        context.update(_encoder_context(dataset, store, p))
    weights = _weights(store, text)
    if context.get("weights") == "random":
        weights = "random"
    results = {m: [] for m in p.methods}
    live = TrainingLog(dataset, live_enabled(params), weights=weights)
    for i, split in enumerate(tqdm(splits, desc=f"train {dataset}")):
        context["pca"] = {}  # per-fold PCA cache shared by the recipes
        data = FoldData(store, text, split, seed=p.seed + i, context=context)
        for m in p.methods:
            est = build(m, params).fit(data)
            for row in getattr(est, "history_", []):  # the kept run's curve, as soon as the fold is fitted
                if "epoch" in row:
                    live.log(m, split.name, row)
            logits = est.logits(data, split.test)
            extra = dict(est.artefacts())
            extra.update(train=split.train, val=split.val)
            if hasattr(est, "chosen"):
                extra["chosen"] = est.chosen()
            results[m].append(al.FoldResult(m, split.name, split.test, np.asarray(logits, np.float32),
                                            int(est.n_params_), list(getattr(est, "history_", [])), extra))
    live.close()
    out = RESULTS_DIR / dataset
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for m, res in results.items():
            meta = {"inject_layers": sorted(p.inject_layers), "seed": p.seed, "cv": {"scheme": p.scheme, "k": p.k,
                    "val_fraction": p.val_fraction}}
            al.save_method_results(tmp / f"{m}.npz", m, res, store.label, store.classes, weights,
                                   estimators[m].get_params(), meta)
    return out


def _encoder_context(ds: str, store, p: AlignmentParams) -> dict:
    """The shared resources of methods that run the encoder: the hooked model on its device and the mel array."""
    heads = read_head_outputs(HEADS_DIR / f"{ds}.zarr")
    mel_store = _mel_store(ds, heads)
    hooked, device = _encoder(ds, mel_store, p.variant, p.device, "train.device")
    return {"hooked": hooked, "device": device, "mel": mel_store["mel"],
            "weights": getattr(hooked.model, "weights", "")}


def _mel_store(ds: str, heads):
    """The dataset's mel store, checked to hold the heads store's clips in the same order."""
    mel_path = MEL_DIR / f"{ds}.zarr"
    mel_store = open_mel_store(mel_path)
    mel_ids = np.array([str(c) for c in mel_store["clip_id"][:]])
    if not np.array_equal(mel_ids, heads.clip_id):
        raise MelStoreError(f"{mel_path}: its clips differ from {heads.path}'s; rerun the 'extract' stage")
    return mel_store


def _encoder(ds: str, mel_store, variant, device: str, device_key: str):
    """The hooked encoder of data/models on `device`, checked against the mel store's mel settings."""
    device = resolve_device(device, device_key)
    model = load_model(checkpoint_from(MODELS_DIR), variant)
    if mel_store.attrs["mel_sha256"] != mel_fingerprint(model):
        raise MelStoreError(f"{MEL_DIR / f'{ds}.zarr'}: mel_sha256 does not match the model's mel extractor; rerun 'preprocess' and 'extract'")
    return HookedHTSAT(model.to(device)), device


def _weights(store, text) -> str:
    """'random' if either the extraction or the text side came from random weights."""
    return "random" if "random" in (store.weights, text.weights) else store.weights


# --------------------------------------------------------------------------- ablation


@dataclass(frozen=True)
class AblationParams:
    total: bool
    stages: tuple
    device: str
    batch_size: int

    @classmethod
    def read(cls, params: dict) -> "AblationParams":
        total = get(params, "ablation.total", False)
        check(isinstance(total, bool), "ablation.total", f"must be true or false, got {total!r}")
        stages = get(params, "ablation.stages", [0, 1, 2, 3])
        check(isinstance(stages, list) and stages and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 3 for s in stages)
              and len(set(stages)) == len(stages), "ablation.stages", f"must be a non-empty list of distinct stages 0-3, got {stages!r}")
        device = get(params, "ablation.device", "auto")
        check(device in ("auto", "cpu", "cuda"), "ablation.device", f"must be auto, cpu or cuda, got {device!r}")
        batch = get(params, "ablation.batch_size", 16)
        check(isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1, "ablation.batch_size",
              f"must be an integer >= 1, got {batch!r}")
        return cls(total, tuple(sorted(stages)), device, batch)


def ablation_stage(params: dict, dataset: str, geometry: str | Path = "plots/geometry/heads.csv") -> None:
    """Mean-ablation drops per head/block → plots/ablation/<dataset>.csv, metrics/<dataset>/ablation.json.

    With `ablation.total: true` the heads of `ablation.stages` are also ablated inside the
    forward pass (total effect, columns total_*), which needs the mel store and the model."""
    import pandas as pd

    p = FoldParams.read(params)
    q = AblationParams.read(params)
    variant = get(params, "model.variant", None)  # the encoder, with ablation.total
    tables, metrics = {}, {}
    geo = pd.read_csv(geometry) if Path(geometry).is_file() else None
    for ds in [dataset]:
        store = _store(ds)
        text = load_text_side(TEXT_DIR / f"{ds}.npz", store.classes)
        splits = splits_for(store, p, warn=False)  # `train` reports the folds
        table = mean_ablation(store, splits, text)
        weights = _weights(store, text)
        heads, blocks = table[table.kind == "head"], table[table.kind == "block"]
        metrics[ds] = {
            "weights": weights,
            "head_drop": {"max": float(heads["drop"].max()), "mean": float(heads["drop"].mean()),
                          "top": heads.nlargest(5, "drop")["unit"].tolist()},
            "block_drop": {"max": float(blocks["drop"].max()), "top": blocks.nlargest(3, "drop")["unit"].tolist()},
            "fisher": fisher_correlation(table, geo, ds) if geo is not None else {},
        }
        if q.total:
            table, model_weights = _total_ablation(ds, variant, q, splits, text, table)
            if model_weights == "random":
                metrics[ds]["weights"] = "random"
            total = table[table.kind == "head"].dropna(subset=["total_drop"])
            metrics[ds]["total"] = {
                "stages": list(q.stages),
                "head_drop": {"max": float(total["total_drop"].max()), "mean": float(total["total_drop"].mean()),
                              "top": total.nlargest(5, "total_drop")["unit"].tolist()},
                "direct_vs_total": direct_total_correlation(table),
                "fisher": fisher_correlation(table, geo, ds, column="total_drop") if geo is not None else {},
            }
        tables[ds] = table
    for ds, table in tables.items():
        with atomic_path(Path("plots/ablation") / f"{ds}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    for ds, block in metrics.items():
        write_json(Path("metrics") / ds / "ablation.json", block)


def _total_ablation(ds: str, variant: str | None, q: AblationParams, splits: list[Split], text, table):
    """Total-effect columns added to the direct-ablation table (NaN for blocks and heads not ablated)."""
    heads = read_head_outputs(HEADS_DIR / f"{ds}.zarr")
    mel_store = _mel_store(ds, heads)
    hooked, device = _encoder(ds, mel_store, variant, q.device, "ablation.device")
    chosen = [u for u, name in enumerate(heads.head_names) if parse_unit(name)["stage"] in q.stages]
    total = total_ablation(hooked, mel_store["mel"], heads.label, heads.pre, heads.head_names, splits, text,
                           q.batch_size, device, heads=chosen)
    merged = table.merge(total[["stage", "block", "head", "kind", "total_accuracy", "total_drop", "total_drop_std"]],
                         on=["kind", "stage", "block", "head"], how="left")
    return merged, getattr(hooked.model, "weights", "")
