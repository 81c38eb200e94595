"""The one table of every key `params.yaml` may hold: its type, range, default and meaning.

The whole file is checked against it before any stage runs (`validate`), so stages and methods
receive checked values and read them with `core.params.get`, which gives a key's default from this
table when the file leaves it out: no module re-checks or re-defaults a key. `--help` and
docs/params.md (`reference_markdown`) are made from it. A typo'd key is refused with the nearest
known key suggested; a boolean is refused where a number is meant (YAML reads `yes`/`no`/`on`/`off`
as booleans). What depends on other values (a method name against the registry, a shot count
against the folds) is checked where that knowledge lives.

To add a parameter, add one line to `SCHEMA`. A `{a|b}` segment matches one of the names listed
(`data.{esc50|folder}.limit` covers `data.esc50.limit` and `data.folder.limit`), so a misspelt
dataset or recipe name is refused like any unknown key. A new dataset is declared by adding its
name to `DATASET_NAMES` beside its entry in `data.datasets.DATASETS` (tests/test_hostile_input.py
keeps the lists equal); a new ResiDual recipe by its row of `RECIPE_DEFAULTS`.
"""

from __future__ import annotations

import difflib
from typing import Any

from .errors import ParamError

DEVICES = ("auto", "cpu", "cuda")

NO_DEFAULT = object()  # "no default": the key must be given


def _spec(kind: str, default, help: str, **fields) -> dict:
    return {"type": kind, "default": default, "help": help, **fields}


def Int(min=None, max=None, null=False, default=NO_DEFAULT, help=""):  # noqa: N802  (reads as a type in the table)
    return _spec("int", default, help, min=min, max=max, null=null)


def Num(min=None, max=None, null=False, min_open=False, max_open=False, default=NO_DEFAULT, help=""):  # noqa: N802
    return _spec("number", default, help, min=min, max=max, null=null, min_open=min_open, max_open=max_open)


def Str(null=False, choices=None, contains=None, default=NO_DEFAULT, help=""):  # noqa: N802
    return _spec("str", default, help, null=null, choices=choices, contains=contains)


def Bool(default=NO_DEFAULT, help=""):  # noqa: N802
    return _spec("bool", default, help)


def List(item, min_len=0, null=False, unique=False, default=NO_DEFAULT, help=""):  # noqa: N802
    return _spec("list", default, help, item=item, min_len=min_len, null=null, unique=unique)


def Any_(*alternatives, default=NO_DEFAULT, help=""):  # noqa: N802
    return _spec("any", default, help, of=alternatives)


def Choice(*choices, null=False, default=NO_DEFAULT, help=""):  # noqa: N802
    return Str(null=null, choices=choices, default=default, help=help)


class PerName(dict):
    """A default that depends on the name a key's `{a|b}` segment matched (e.g. each recipe's own)."""


DATASET_NAMES = ("esc50", "tinysol", "vocalsound", "folder")  # data.datasets.DATASETS
_DATA = "data.{" + "|".join(DATASET_NAMES) + "}"

# The published recipes (Basile et al., 2025: conf/train/residual_*.gin, nn/adapter.py) and ours
# (identity): the defaults of `residual.recipes.<name>.*`, and `methods.residual.maths.RECIPES`.
RECIPE_DEFAULTS = {
    "coarse": dict(units="heads", pca=False, variance=1.0, beyond="keep", lam_init="normal", add_mean=False,
                   others="remove", lr=0.8, max_epochs=30, patience=5, batch_size=64, select_on="val_accuracy",
                   warmup_epochs=0, select_from_epoch=1, reconstruct="paper"),
    "fine": dict(units="heads", pca=True, variance=0.9, beyond="drop", lam_init="normal", add_mean=False,
                 others="remove", lr=0.8, max_epochs=30, patience=5, batch_size=64, select_on="val_accuracy",
                 warmup_epochs=0, select_from_epoch=1, reconstruct="paper"),
    "full": dict(units="heads+mlp", pca=True, variance=1.0, beyond="drop", lam_init="normal", add_mean=False,
                 others="keep", lr=0.8, max_epochs=30, patience=5, batch_size=64, select_on="val_accuracy",
                 warmup_epochs=0, select_from_epoch=1, reconstruct="paper"),
    "identity": dict(units="heads", pca=True, variance=0.95, beyond="keep", lam_init="ones", add_mean=True,
                     others="keep", lr=0.01, max_epochs=30, patience=5, batch_size=64,
                     select_on="val_loss", warmup_epochs=1, select_from_epoch=0, reconstruct="paper"),
}
RECIPE_NAMES = tuple(RECIPE_DEFAULTS)
_RECIPE = "residual.recipes.{" + "|".join(RECIPE_NAMES) + "}"


def _recipe(field: str) -> PerName:
    return PerName({name: fields[field] for name, fields in RECIPE_DEFAULTS.items()})


DEFAULT_METHODS = ["zeroshot", "linear_probe", "linear", "spectral_out", "residual_coarse", "residual_fine",
                   "residual_fine_unlabelled", "residual_full", "residual_identity", "linear_adapter", "tip_adapter", "tip_adapter_f"]
FEWSHOT_METHODS = ["zeroshot", "linear_probe", "tip_adapter", "tip_adapter_f", "residual_fine",
                   "residual_fine_unlabelled", "residual_identity"]
_POSITIVE = Num(min=0, min_open=True)
_SELECT = "val_accuracy | val_loss: early stopping and the kept checkpoint"

SCHEMA: dict[str, dict] = {
    "seed": Int(min=0, default=0, help="seed for every random choice (subsets, splits, initialisations)"),
    "datasets": List(Choice(*DATASET_NAMES), min_len=1, unique=True, default=["esc50"],
                     help="the datasets the pipeline runs on; every per-dataset stage runs once for each"),
    f"{_DATA}.source": Any_(Str(null=True), List(Str(), min_len=1), default=None,
                            help="a URL (http/https/file), a local directory or a local archive (.zip/.tar/.tar.gz/"
                                 ".tgz), or a list of them; null: the dataset's official source (none for folder)"),
    f"{_DATA}.sha256": Any_(Str(null=True), List(Str(null=True), min_len=1), default=None,
                            help="sha256 of each source file or archive, checked when fetched"),
    f"{_DATA}.limit": Int(min=1, null=True, default=PerName(esc50=None, tinysol=None, vocalsound=1200, folder=None),
                          help="keep a stratified, seeded subset of this many clips (null: every clip)"),
    f"{_DATA}.csv": Str(null=True, default=None,
                        help="folder: a path,label[,fold] CSV relative to the fetched folder (null: class folders)"),
    "download.max_unpacked_mb": Num(min=0, min_open=True, default=65536,
                                    help="largest total unpacked size of one archive, MiB (a zip/tar-bomb guard)"),
    "download.max_members": Int(min=1, default=1_000_000, help="most files and folders in one archive"),
    "model.checkpoint": Str(default="630k-audioset-best.pt",
                            help="random (seeded random LAION-CLAP weights), a URL, a local file (LAION-CLAP .pt or "
                                 "MS-CLAP 2023 .pth, told by content), an official file name (LAION's, or "
                                 "CLAP_weights_2023.pth), hf:<owner>/<name> or a local ClapModel folder"),
    "model.checkpoint_sha256": Str(null=True, default=None, help="sha256 the checkpoint file must have"),
    "model.variant": Choice("tiny", "base", default="tiny",
                            help="HTSAT-tiny (184 heads) or HTSAT-base (280 heads; LAION only)"),
    "model.tokenizer": Str(null=True, default="auto",
                           help="auto (the family's own from the hub: roberta-base for LAION, gpt2 for MS-CLAP), a URL "
                                "base or a local folder holding vocab.json and merges.txt"),
    "preprocess.crop": Any_(Choice("start", "center"), Int(min=0), default="start",
                            help="clips longer than 10 s: keep the window at start, center or this sample offset"),
    "preprocess.batch_size": Int(min=1, default=16, help="clips per log-mel batch"),
    "preprocess.workers": Any_(Choice("auto"), Int(min=1), default="auto",
                               help="processes that decode and resample (auto: the machine's cores; the store is the "
                                    "same for any number)"),
    "preprocess.min_seconds": Num(min=0, default=0.1, help="shorter clips are refused"),
    "preprocess.front_end": Choice("exact", "laion_api", default="exact",
                                   help="exact (soundfile + polyphase resampling) | laion_api (librosa, as LAION's API)"),
    "extract.batch_size": Int(min=1, default=16, help="clips per forward pass"),
    "extract.device": Choice(*DEVICES, default="auto", help="auto (cuda when available) | cpu | cuda"),
    "extract.regimes": List(Choice("pre", "post", "direct"), min_len=1, unique=True, default=["pre", "post", "direct"],
                            help="pre: heads before the output projection; post: after it; direct: units -> embedding"),
    "inject_layers": List(Int(min=0, max=3), min_len=1, unique=True, default=[0, 1, 2, 3],
                          help="stages (0-3) whose units ResiDual reweights"),
    "zeroshot.templates": Any_(Choice("auto"), List(Str(contains="{label}"), min_len=1), default="auto",
                               help="auto (the family's prompt: LAION 'This is a sound of {label}', MS-CLAP 'this is a "
                                    "sound of {label}') or prompts, each with {label}, averaged after normalisation"),
    "cv.scheme": Choice("official", "stratified", default="official",
                        help="official (leave one official fold out) | stratified"),
    "cv.k": Int(min=2, default=5, help="stratified folds (also used when fewer than two official folds exist)"),
    "cv.val_fraction": Num(min=0, max=1, min_open=True, max_open=True, default=0.1,
                           help="early-stopping split carved from the training folds"),
    "methods": List(Str(), min_len=1, unique=True, default=DEFAULT_METHODS,
                    help="the methods train fits on every fold (names checked against the method registry)"),
    "live": Bool(default=True, help="log training curves with DVCLive into dvclive/<dataset>/"),
    "residual.granularity": Choice("head", "stage", default="head",
                                   help="residual_inject: head (attn.hook_z per head) | stage (after the projection)"),
    "residual.inject.recipe": Choice(*RECIPE_NAMES, default="identity", help="residual_inject's recipe"),
    "residual.inject.micro_batch": Int(min=1, default=8, help="clips per forward/backward of residual_inject"),
    "residual.bases_on": Choice("fit", "unlabelled", default="fit",
                                help="per-unit mean and PCA fitted on the fold's fitting clips | every training-side clip"),
    f"{_RECIPE}.units": Choice("heads", "heads+mlp", default=_recipe("units"),
                               help="units reweighted, of the stages in inject_layers"),
    f"{_RECIPE}.pca": Bool(default=_recipe("pca"), help="false: one λ per unit, no basis, no mean"),
    f"{_RECIPE}.variance": Num(min=0, max=1, min_open=True, default=_recipe("variance"),
                               help="explained-variance threshold of the kept components"),
    f"{_RECIPE}.beyond": Choice("keep", "drop", default=_recipe("beyond"),
                                help="components past the threshold: keep (unchanged) | drop"),
    f"{_RECIPE}.lam_init": Choice("ones", "normal", default=_recipe("lam_init"), help="ones | normal (1 + N(0,1), seeded)"),
    f"{_RECIPE}.add_mean": Bool(default=_recipe("add_mean"), help="add the mean back after reweighting"),
    f"{_RECIPE}.others": Choice("keep", "remove", "mean", default=_recipe("others"),
                                help="units not reweighted: keep (summed unchanged) | remove (zero ablation) | mean "
                                     "(mean ablation: each one's mean over the clips the bases are fitted on)"),
    f"{_RECIPE}.lr": Any_(_POSITIVE, List(_POSITIVE, min_len=1), default=_recipe("lr"),
                          help="a learning rate, or a grid chosen on validation"),
    f"{_RECIPE}.max_epochs": Int(min=0, max=30, default=_recipe("max_epochs"), help="most training epochs"),
    f"{_RECIPE}.patience": Int(min=1, default=_recipe("patience"), help="early-stopping patience, epochs"),
    f"{_RECIPE}.batch_size": Int(min=1, default=_recipe("batch_size"), help="clips per step"),
    f"{_RECIPE}.select_on": Choice("val_accuracy", "val_loss", default=_recipe("select_on"), help=_SELECT),
    f"{_RECIPE}.select_from_epoch": Int(min=0, max=1, default=_recipe("select_from_epoch"),
                                        help="first epoch whose checkpoint may be kept: 1 (as the released code: "
                                             "the untrained state never competes) or 0"),
    f"{_RECIPE}.warmup_epochs": Int(min=0, default=_recipe("warmup_epochs"),
                                    help="schedule-free AdamW warm-up (the released code uses none)"),
    f"{_RECIPE}.reconstruct": Choice("paper", "released", default=_recipe("reconstruct"),
                                     help="paper: Φᵀ diag(λ) Φ (x − μ), the paper's equation | released: as the "
                                          "released code computes it (with a square basis it maps back with Φᵀ; see "
                                          "docs/methods.md)"),
    "train.max_epochs": Int(min=0, max=30, default=30, help="trained baselines: most training epochs"),
    "train.patience": Int(min=1, default=5, help="trained baselines: early-stopping patience, epochs"),
    "train.batch_size": Int(min=1, default=64, help="trained baselines: clips per step"),
    "train.weight_decay": Num(min=0, default=0.0, help="trained baselines: AdamW weight decay"),
    "train.select_on": Choice("val_accuracy", "val_loss", default="val_accuracy", help=_SELECT),
    "train.select_from_epoch": Int(min=0, max=1, default=1,
                                   help="trained baselines: first epoch whose checkpoint may be kept (1 or 0)"),
    "train.device": Choice(*DEVICES, default="auto", help="methods that run the encoder: auto | cpu | cuda"),
    "baselines.linear.lr": List(Num(min=0, min_open=True), min_len=1, default=[0.001],
                                help="the released code's value; a list is a grid chosen on validation"),
    "baselines.linear.init": Choice("default", "identity", default="default",
                                    help="default (nn.Linear's init, seeded) | identity (W = I, b = 0)"),
    "baselines.spectral_out.lr": List(Num(min=0, min_open=True), min_len=1, default=[0.001],
                                      help="the released code's value; a list is a grid chosen on validation"),
    "baselines.spectral_out.lam_init": Choice("ones", "normal", default="normal", help="ones | normal (1 + N(0,1))"),
    "baselines.spectral_out.add_mean": Bool(default=False, help="add the mean back after reweighting"),
    "baselines.spectral_out.reconstruct": Choice("paper", "released", default="paper",
                                                 help="paper: Φᵀ diag(λ) Φ (x − μ) | released: (x − μ) ⊙ λ, as the "
                                                      "released code computes it"),
    "baselines.linear_adapter.lr": List(Num(min=0, min_open=True), min_len=1, default=[0.01],
                                        help="ours (no published value); a list is a grid chosen on validation"),
    "fewshot.shots": List(Int(min=1), min_len=1, unique=True, default=[1, 2, 4, 8, 16],
                          help="k labelled clips per class; counts the training folds cannot supply are skipped"),
    "fewshot.seeds": Int(min=1, default=3, help="draws per test fold"),
    "fewshot.methods": List(Str(), min_len=1, unique=True, default=FEWSHOT_METHODS,
                            help="registered method names run at every shot count"),
    "fewshot.inject": Bool(default=False, help="also run methods that need the audio encoder every epoch"),
    "fewshot.protocol": Choice("within", "oracle", default="within",
                               help="within: a k-shot point sees k labels per class, methods that select on validation "
                                    "split them (cv.val_fraction of the k, at least 1; none at k = 1) | oracle: they "
                                    "get k more per class as validation clips (2k labels)"),
    "tip_adapter.alpha": List(Num(min=0), min_len=1, default=[1.0],
                              help="α (weight of the cache): the paper's 1; a list is a grid chosen on validation"),
    "tip_adapter.beta": List(Num(min=0, min_open=True), min_len=1, default=[5.5],
                             help="β (sharpness of the cache affinities): the paper's 5.5; a list is a grid"),
    "tip_adapter.epochs": Int(min=0, default=20, help="tip_adapter_f: epochs of cache-key fine-tuning"),
    "tip_adapter.alpha_unit": Choice("clip", "raw", default="clip",
                                     help="clip: α is on CLIP's logit scale of 100, as published, and is scaled by the "
                                          "model's logit scale / 100 | raw: α multiplies the cache logits as it is"),
    "tuning.mode": Choice("published", "grid", default="published",
                          help="published: every method with its published fixed hyper-parameters (the values in "
                               "params.yaml) | grid: every trained method an lr grid of the same size (its lr × "
                               "tuning.lr_factors) and Tip-Adapter the original's α, β search, all on validation"),
    "tuning.lr_factors": List(Num(min=0, min_open=True), min_len=1, unique=True, default=[0.1, 0.3, 1.0, 3.0, 10.0],
                              help="grid: each trained method's learning rates are its own times these"),
    "tuning.tip_search_scale": List(Num(min=0.1, min_open=True), min_len=2, default=[7.0, 3.0],
                                    help="grid: Tip-Adapter's search_scale [β, α] (its ImageNet config)"),
    "tuning.tip_search_step": List(Int(min=1), min_len=2, default=[200, 20],
                                   help="grid: Tip-Adapter's search_step [β, α] (its ImageNet config)"),
    "prompt_learning.epochs": Any_(Choice("coop"), Int(min=0), default="coop",
                                   help="coop (CoOp's 50 / 100 / 200 epochs at 1 / 2-4 / 8+ shots) or an integer"),
    "probe.C": List(Num(min=0, min_open=True), min_len=1, default=[0.1, 1.0, 10.0, 100.0],
                    help="inverse regularisation grid of the linear probe, chosen on validation"),
    "ablation.total": Bool(default=False, help="also ablate each head inside the forward pass (total effect)"),
    "ablation.stages": List(Int(min=0, max=3), min_len=1, unique=True, default=[0, 1, 2, 3],
                            help="stages whose heads get the total-effect ablation"),
    "ablation.device": Choice(*DEVICES, default="auto", help="the encoder's forward for total: auto | cpu | cuda"),
    "ablation.batch_size": Int(min=1, default=16, help="clips per forward for total"),
    "geometry.regimes": List(Choice("pre", "post"), min_len=1, unique=True, default=["pre", "post"],
                             help="pre: head output before the projection; post: after it"),
    "geometry.mle_k": Int(min=3, max=200, default=20, help="neighbours of the Levina-Bickel MLE"),
    "geometry.twonn_discard": Num(min=0, max=0.5, default=0.1, help="largest TwoNN ratios left out of the fit"),
    "geometry.duplicate_rtol": Num(min=0, max=1e-2, min_open=True, default=1e-6,
                                   help="clips closer than this x the cloud's RMS radius count as duplicates"),
}


# --------------------------------------------------------------------------- checking


def _describe(spec: dict) -> str:
    kind = spec["type"]
    if kind == "any":
        return " or ".join(_describe(s) for s in spec["of"])
    if kind == "str" and spec.get("choices"):
        text = "one of " + ", ".join(repr(c) for c in spec["choices"])
    elif kind == "list":
        text = f"a list of {_describe(spec['item'])}" + (" (non-empty)" if spec["min_len"] else "")
    elif kind in ("int", "number"):
        text = "an integer" if kind == "int" else "a number"
        lo, hi = spec.get("min"), spec.get("max")
        if lo is not None:
            text += f" {'>' if spec.get('min_open') else '>='} {lo}"
        if hi is not None:
            text += f"{',' if lo is not None else ''} {'<' if spec.get('max_open') else '<='} {hi}"
    elif kind == "bool":
        text = "true or false"
    else:
        text = "a string" + (f" containing {spec['contains']!r}" if spec.get("contains") else "")
    return text + (" or null" if spec.get("null") else "")


def _problem(value: Any, spec: dict) -> str | None:
    """Why `value` does not fit `spec`, or None when it does."""
    kind = spec["type"]
    if kind == "any":
        return None if any(_problem(value, s) is None for s in spec["of"]) else f"must be {_describe(spec)}"
    if value is None:
        return None if spec.get("null") else f"must be {_describe(spec)}, not null"
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, not {value!r}"
    if isinstance(value, bool):
        return f"must be {_describe(spec)}, not the boolean {str(value).lower()}"
    if kind == "str":
        if not isinstance(value, str):
            return f"must be {_describe(spec)}, not {value!r}"
        if spec.get("choices") and value not in spec["choices"]:
            near = difflib.get_close_matches(value, spec["choices"], n=1)
            return f"is {value!r}; must be {_describe(spec)}" + (f" (did you mean {near[0]!r}?)" if near else "")
        if spec.get("contains") and spec["contains"] not in value:
            return f"is {value!r}; must contain {spec['contains']!r}"
        return None
    if kind in ("int", "number"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if not ok:
            return f"must be {_describe(spec)}, not {value!r}"
        lo, hi = spec.get("min"), spec.get("max")
        if value != value or (lo is not None and (value < lo or (spec.get("min_open") and value == lo))) or (
            hi is not None and (value > hi or (spec.get("max_open") and value == hi))
        ):
            return f"is {value!r}; must be {_describe(spec)}"
        return None
    if kind == "list":
        if not isinstance(value, list):
            return f"must be {_describe(spec)}, not {value!r}"
        if len(value) < spec["min_len"]:
            return f"is {value!r}; must be {_describe(spec)}"
        for i, item in enumerate(value):
            why = _problem(item, spec["item"])
            if why is not None:
                return f"item {i} {why}"
        if spec.get("unique") and len({repr(v) for v in value}) != len(value):
            return f"lists an entry twice: {value!r}"
        return None
    raise ValueError(f"schema: unknown type {kind!r}")


def _names(segment: str) -> tuple[str, ...] | None:
    """The names a `{a|b}` segment allows (None for a plain segment)."""
    return tuple(segment[1:-1].split("|")) if segment.startswith("{") and segment.endswith("}") else None


def _segment_matches(pattern: str, name: str) -> bool:
    names = _names(pattern)
    return name in names if names is not None else name == pattern


def _matches(pattern: str, key: str) -> bool:
    p, k = pattern.split("."), key.split(".")
    return len(p) == len(k) and all(_segment_matches(ps, ks) for ps, ks in zip(p, k))


def _is_prefix(pattern: str, key: str) -> bool:
    p, k = pattern.split("."), key.split(".")
    return len(p) > len(k) and all(_segment_matches(ps, ks) for ps, ks in zip(p, k))


def _suggest(key: str, schema: dict) -> str:
    parts = key.split(".")
    candidates = []
    for pattern in schema:
        filled = [[]]
        for i, segment in enumerate(pattern.split(".")[: len(parts)]):
            names = _names(segment)
            options = ([parts[i]] if parts[i] in names else list(names)) if names is not None else [segment]
            filled = [f + [o] for f in filled for o in options]
        candidates += [".".join(f) for f in filled]
    candidates = sorted(set(candidates))
    near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else ""


def validate(params: dict, schema: dict | None = None, source: str = "params.yaml") -> None:
    """Raise ParamError naming the first key of `params` that `schema` does not know or allow."""
    schema = SCHEMA if schema is None else schema

    def walk(node: dict, prefix: str) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if not isinstance(name, str):
                raise ParamError(f"{source}: key {key!r} is not a name")
            leaf = next((schema[p] for p in schema if _matches(p, key)), None)
            if leaf is not None:
                why = _problem(value, leaf)
                if why is not None:
                    raise ParamError(f"{source}: '{key}' {why}")
            elif any(_is_prefix(p, key) for p in schema):
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ParamError(f"{source}: '{key}' must be a mapping of parameters, not {value!r}")
                walk(value, key + ".")
            else:
                raise ParamError(f"{source}: unknown parameter '{key}'{_suggest(key, schema)}")

    walk(params, "")


# --------------------------------------------------------------------------- defaults and reference


def _leaf(key: str) -> tuple[str, dict] | None:
    return next(((p, SCHEMA[p]) for p in SCHEMA if _matches(p, key)), None)


def _resolve(pattern: str, key: str, default):
    if isinstance(default, PerName):
        for ps, ks in zip(pattern.split("."), key.split(".")):
            if _names(ps) is not None and ks in default:
                return default[ks]
        raise KeyError(key)
    return default


def default(key: str):
    """The schema's default of `key` (a leaf, or a mapping holding every leaf under a prefix);
    `NO_DEFAULT` when the key has none."""
    found = _leaf(key)
    if found is not None:
        value = _resolve(found[0], key, found[1]["default"])
        return value if value is NO_DEFAULT else _copy(value)
    tree: dict = {}
    for pattern in SCHEMA:
        if not _is_prefix(pattern, key):
            continue
        for full in _expand(pattern):
            if _is_prefix_key(key, full):
                value = default(full)
                if value is not NO_DEFAULT:
                    node = tree
                    rest = full.split(".")[len(key.split(".")):]
                    for part in rest[:-1]:
                        node = node.setdefault(part, {})
                    node[rest[-1]] = value
    return tree if tree else NO_DEFAULT



def _copy(value):
    return list(value) if isinstance(value, list) else value


def _expand(pattern: str) -> list[str]:
    """Every key a pattern stands for (`{a|b}` segments expanded)."""
    keys = [[]]
    for segment in pattern.split("."):
        keys = [k + [n] for k in keys for n in (_names(segment) or (segment,))]
    return [".".join(k) for k in keys]


def _is_prefix_key(prefix: str, key: str) -> bool:
    return key.startswith(prefix + ".")


def reference_markdown() -> str:
    """docs/params.md: every key with its type and range, its default and its meaning, from `SCHEMA`."""
    lines = ["# params.yaml reference", "",
             "Generated from `residual_audio/core/schema.py`, the one table of every key; a test keeps this",
             "page equal to it (regenerate with `python -m residual_audio.core.schema > docs/params.md`).",
             "A `{a|b}` segment stands for each name listed. A key left out of `params.yaml` takes its default.",
             "", "| key | allowed | default | meaning |", "|---|---|---|---|"]
    for pattern, spec in SCHEMA.items():
        value = spec["default"]
        if isinstance(value, PerName):
            shown = "; ".join(f"{n}: `{_yaml(v)}`" for n, v in value.items())
        else:
            shown = "(required)" if value is NO_DEFAULT else f"`{_yaml(value)}`"
        cells = [f"`{pattern}`", _describe(spec), shown, spec["help"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _yaml(value) -> str:
    import json

    return "null" if value is None else json.dumps(value) if not isinstance(value, bool) else str(value).lower()


if __name__ == "__main__":
    print(reference_markdown(), end="")
