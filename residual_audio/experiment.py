"""The alignment stages (text, bases, baselines, train, ablation) as functions of params.yaml.

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
from .io import atomic_path, write_json
from .params import ParamError, check, get
from .protocol import SCHEMES, Split, make_splits
from .inject import entry_inputs, fit_head_bases, read_head_outputs, restrict
from .residual import BEYOND, check_mode, fit_bases, load_bases, save_bases
from .training import TrainConfig
from .units import UNIT_SETS, read_units
from .zeroshot import DEFAULT_TEMPLATES, load_text_side, save_text_side

HEADS_DIR, TEXT_DIR, BASES_DIR, RESULTS_DIR = Path("data/heads"), Path("data/text"), Path("data/bases"), Path("data/results")
MEL_DIR = Path("data/mel")  # written by the preprocess stage; read by inject mode only
MODELS_DIR = Path("data/models")  # written by the download stage: checkpoint.pt, tokenizer/
SPACES = {"direct": "direct/units", "inject": "heads/pre"}  # what the bases of each residual.mode are fitted on


@dataclass(frozen=True)
class AlignmentParams:
    datasets: list
    seed: int
    inject_layers: list
    scheme: str
    k: int
    val_fraction: float
    mode: str
    units: str
    variance: float
    beyond: str
    train: TrainConfig
    probe_grid: tuple
    device: str = "auto"  # train.device, for the encoder's forward in inject mode
    variant: str | None = None  # model.variant, for the encoder in inject mode

    @classmethod
    def read(cls, params: dict) -> "AlignmentParams":
        dataset = get(params, "dataset")
        check(isinstance(dataset, str) and dataset, "dataset", f"must be a dataset name, got {dataset!r}")
        datasets = [dataset]
        seed = get(params, "seed", 0)
        check(isinstance(seed, int), "seed", f"must be an integer, got {seed!r}")
        mode, inject = get(params, "residual.mode", "direct"), get(params, "inject_layers", [0])
        check_mode(mode, inject)
        scheme, k = get(params, "cv.scheme", "official"), get(params, "cv.k", 5)
        check(scheme in SCHEMES, "cv.scheme", f"must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        check(isinstance(k, int) and k >= 2, "cv.k", f"must be an integer >= 2, got {k!r}")
        val = get(params, "cv.val_fraction", 0.1)
        check(isinstance(val, (int, float)) and 0 <= val < 1, "cv.val_fraction", f"must be in [0, 1), got {val!r}")
        units = get(params, "residual.units", "heads")
        check(units in UNIT_SETS, "residual.units", f"must be one of {', '.join(UNIT_SETS)}, got {units!r}")
        variance = get(params, "residual.variance", 0.95)
        check(isinstance(variance, (int, float)) and 0 < variance <= 1, "residual.variance", f"must be in (0, 1], got {variance!r}")
        beyond = get(params, "residual.beyond", "keep")
        check(beyond in BEYOND, "residual.beyond", f"must be one of {', '.join(BEYOND)}, got {beyond!r}")
        cfg = TrainConfig(
            max_epochs=get(params, "train.max_epochs", 30), lr=get(params, "train.lr", 0.01),
            patience=get(params, "train.patience", 5), batch_size=get(params, "train.batch_size", 64),
            seed=seed, weight_decay=get(params, "train.weight_decay", 0.0), lr_find=bool(get(params, "train.lr_find", False)),
        ).check()
        check(mode != "inject" or units == "heads", "residual.units",
              f"must be 'heads' with residual.mode: inject (it reweights head outputs before the projection), got {units!r}")
        device = get(params, "train.device", "auto")
        check(device in ("auto", "cpu", "cuda"), "train.device", f"must be auto, cpu or cuda, got {device!r}")
        grid = get(params, "probe.C", [0.1, 1.0, 10.0, 100.0])
        check(isinstance(grid, list) and grid and all(isinstance(c, (int, float)) and c > 0 for c in grid),
              "probe.C", f"must be a non-empty list of positive numbers, got {grid!r}")
        return cls(datasets, seed, list(inject), scheme, k, float(val), mode, units, float(variance), beyond, cfg,
                   tuple(float(c) for c in grid), device, get(params, "model.variant", None))


def splits_for(store, p: AlignmentParams) -> list[Split]:
    return make_splits(store.label, store.fold, p.scheme, p.k, p.seed, p.val_fraction)


def _store(dataset: str):
    return read_units(HEADS_DIR / f"{dataset}.zarr")


# --------------------------------------------------------------------------- text


def text_stage(params: dict) -> None:
    """Class vectors, temperature and frozen audio projection per dataset → data/text/<dataset>.npz."""
    import zarr

    from . import hf
    from .clap import load_model, load_tokenizer
    from .io import sha256_file
    from .zeroshot import build_text_side

    datasets = [get(params, "dataset")]
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


# --------------------------------------------------------------------------- bases


def bases_stage(params: dict) -> None:
    """Per dataset and fold: unit means and PCA bases from the training folds only.

    Direct mode fits the units' direct contributions (`direct/units`); inject mode fits every
    head's pooled output before the projection (`heads/pre`), all stages, so that changing
    `inject_layers` needs no new bases. The file records which (`space`).
    """
    p = AlignmentParams.read(params)
    space = SPACES[p.mode]
    with atomic_path(BASES_DIR) as tmp:
        for ds in p.datasets:
            store = read_head_outputs(HEADS_DIR / f"{ds}.zarr") if p.mode == "inject" else _store(ds)
            (tmp / ds).mkdir(parents=True)
            for split in tqdm(splits_for(store, p), desc=f"bases {ds}"):
                if p.mode == "inject":
                    bases = fit_head_bases(store, split.train_all, p.variance)
                else:
                    bases = fit_bases(store.units[split.train_all], store.select(p.units), store.unit_names, p.variance)
                save_bases(tmp / ds / f"{split.name}.npz", bases, train=split.train, val=split.val, test=split.test,
                           weights=np.array(store.weights), space=np.array(space))


def _fold_bases(ds: str, split: Split, mode: str, expected_units: list[str]):
    """The bases of one fold, checked against the current folds, mode and units."""
    path = BASES_DIR / ds / f"{split.name}.npz"
    bases, extra = load_bases(path)
    if not np.array_equal(extra["test"], split.test) or not np.array_equal(extra["val"], split.val):
        raise ParamError(f"{path}: fitted on other folds than 'cv.*'/'seed' now give; rerun 'bases'")
    space = str(extra.get("space", SPACES["direct"]))
    if space != SPACES[mode]:
        raise ParamError(f"{path}: fitted on '{space}' for another 'residual.mode' than {mode!r}; rerun 'bases'")
    if bases.unit_names != expected_units:
        raise ParamError(f"{BASES_DIR / ds}: bases are for other units than 'residual.units' now selects; rerun 'bases'")
    return bases


# --------------------------------------------------------------------------- baselines / train


def baselines_stage(params: dict) -> None:
    """Zero-shot, linear probe and linear adapter on every fold → data/results/baselines/<dataset>.npz."""
    p = AlignmentParams.read(params)
    outputs = {}
    for ds in p.datasets:
        store = _store(ds)
        text = load_text_side(TEXT_DIR / f"{ds}.npz", store.classes)
        results = []
        for split in tqdm(splits_for(store, p), desc=f"baselines {ds}"):
            results += [al.run_zeroshot(store, split, text), al.run_probe(store, split, text, p.probe_grid, p.seed),
                        al.run_adapter(store, split, text, p.train)]
        outputs[ds] = (results, store, text)
    with atomic_path(RESULTS_DIR / "baselines") as tmp:
        tmp.mkdir()
        for ds, (results, store, text) in outputs.items():
            al.save_results(tmp / f"{ds}.npz", results, store.label, store.classes, _weights(store, text))


def train_stage(params: dict) -> None:
    """ResiDual on every fold → data/results/residual/<dataset>.npz."""
    p = AlignmentParams.read(params)
    outputs = {}
    for ds in p.datasets:
        if p.mode == "inject":
            outputs[ds] = _train_inject(ds, p)
            continue
        store = _store(ds)
        text = load_text_side(TEXT_DIR / f"{ds}.npz", store.classes)
        results = []
        units = [store.unit_names[i] for i in store.select(p.units)]
        for split in tqdm(splits_for(store, p), desc=f"residual {ds}"):
            bases = _fold_bases(ds, split, p.mode, units)
            results.append(al.run_residual(store, split, text, bases, p.train, p.beyond))
        outputs[ds] = (results, store, _weights(store, text), units)
    with atomic_path(RESULTS_DIR / "residual") as tmp:
        tmp.mkdir()
        for ds, (results, store, weights, names) in outputs.items():
            meta = {"unit_names": names, "mode": p.mode, "beyond": p.beyond, "variance": p.variance}
            if p.mode == "inject":
                meta["inject_layers"] = sorted(p.inject_layers)
            al.save_results(tmp / f"{ds}.npz", results, store.label, store.classes, weights, meta=meta)


def _train_inject(ds: str, p: AlignmentParams):
    """Inject mode on one dataset: every input is checked before the encoder is built; the
    stream entering the first injected stage is computed once for all folds."""
    heads = read_head_outputs(HEADS_DIR / f"{ds}.zarr")
    text = load_text_side(TEXT_DIR / f"{ds}.npz", heads.classes)
    mel_store = _mel_store(ds, heads)
    splits = splits_for(heads, p)
    bases = [_fold_bases(ds, split, p.mode, heads.head_names) for split in splits]
    hooked, device = _encoder(ds, mel_store, p.variant, p.device, "train.device")
    model = hooked.model
    cache = entry_inputs(hooked, mel_store["mel"], min(p.inject_layers), p.train.batch_size, device)
    results = [al.run_inject_residual(cache, heads.label, split, text, b, hooked, p.inject_layers, p.train, p.beyond)
               for split, b in zip(tqdm(splits, desc=f"residual {ds} (inject)"), bases)]
    weights = "random" if "random" in (heads.weights, text.weights, getattr(model, "weights", "")) else heads.weights
    return results, heads, weights, restrict(bases[0], p.inject_layers).unit_names


def _mel_store(ds: str, heads):
    """The dataset's mel store, checked to hold the heads store's clips in the same order."""
    from .extract import MelStoreError, open_mel_store

    mel_path = MEL_DIR / f"{ds}.zarr"
    mel_store = open_mel_store(mel_path)
    mel_ids = np.array([str(c) for c in mel_store["clip_id"][:]])
    if not np.array_equal(mel_ids, heads.clip_id):
        raise MelStoreError(f"{mel_path}: its clips differ from {heads.path}'s; rerun the 'extract' stage")
    return mel_store


def _encoder(ds: str, mel_store, variant, device: str, device_key: str):
    """The hooked encoder of data/models on `device`, checked against the mel store's mel settings."""
    from .clap import checkpoint_from, load_model, mel_fingerprint
    from .extract import MelStoreError, resolve_device
    from .hooked import HookedHTSAT

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


def ablation_stage(params: dict, geometry: str | Path = "plots/geometry/heads.csv") -> None:
    """Mean-ablation drops per head/block → plots/ablation/<dataset>.csv, metrics/ablation.json.

    With `ablation.total: true` the heads of `ablation.stages` are also ablated inside the
    forward pass (total effect, columns total_*), which needs the mel store and the model."""
    import pandas as pd

    from .ablation import direct_total_correlation, fisher_correlation, mean_ablation

    p = AlignmentParams.read(params)
    q = AblationParams.read(params)
    tables, metrics = {}, {}
    geo = pd.read_csv(geometry) if Path(geometry).is_file() else None
    for ds in p.datasets:
        store = _store(ds)
        text = load_text_side(TEXT_DIR / f"{ds}.npz", store.classes)
        splits = splits_for(store, p)
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
            table, model_weights = _total_ablation(ds, p, q, splits, text, table)
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
    write_json("metrics/ablation.json", metrics)


def _total_ablation(ds: str, p: AlignmentParams, q: AblationParams, splits: list[Split], text, table):
    """Total-effect columns added to the direct-ablation table (NaN for blocks and heads not ablated)."""
    from .ablation import total_ablation
    from .units import parse_unit

    heads = read_head_outputs(HEADS_DIR / f"{ds}.zarr")
    mel_store = _mel_store(ds, heads)
    hooked, device = _encoder(ds, mel_store, p.variant, q.device, "ablation.device")
    chosen = [u for u, name in enumerate(heads.head_names) if parse_unit(name)["stage"] in q.stages]
    total = total_ablation(hooked, mel_store["mel"], heads.label, heads.pre, heads.head_names, splits, text,
                           q.batch_size, device, heads=chosen)
    merged = table.merge(total[["stage", "block", "head", "kind", "total_accuracy", "total_drop", "total_drop_std"]],
                         on=["kind", "stage", "block", "head"], how="left")
    return merged, getattr(hooked.model, "weights", "")
