"""The one table of every key `params.yaml` may hold, checked as a whole before any stage runs.

A typo'd key would otherwise run silently with the default, so an unknown key is refused
with the nearest known key suggested; a boolean is refused where a number is meant (YAML
reads `yes`/`no`/`on`/`off` as booleans). Stages still check what depends on other
values (e.g. a dataset's options); this table checks each key's type, choices and range.

To add a parameter, add one line to `SCHEMA`. A `{a|b}` segment matches one of the names listed
(`data.{esc50|folder}.limit` covers `data.esc50.limit` and `data.folder.limit`), so a misspelt
dataset or recipe name is refused like any unknown key. A new dataset or ResiDual recipe is
declared by adding its name to `DATASET_NAMES` or `RECIPE_NAMES` below, beside its entry in
`data.datasets.DATASETS` or `methods.residual.maths.RECIPES` (tests/test_hostile_input.py keeps
the lists equal).
"""

from __future__ import annotations

import difflib
from typing import Any

from .params import ParamError

DEVICES = ("auto", "cpu", "cuda")


def Int(min=None, max=None, null=False):  # noqa: N802  (reads as a type in the table)
    return {"type": "int", "min": min, "max": max, "null": null}


def Num(min=None, max=None, null=False, min_open=False, max_open=False):  # noqa: N802
    return {"type": "number", "min": min, "max": max, "null": null, "min_open": min_open, "max_open": max_open}


def Str(null=False, choices=None):  # noqa: N802
    return {"type": "str", "null": null, "choices": choices}


def Bool():  # noqa: N802
    return {"type": "bool"}


def List(item, min_len=0, null=False, unique=False):  # noqa: N802
    return {"type": "list", "item": item, "min_len": min_len, "null": null, "unique": unique}


def Any_(*alternatives):  # noqa: N802
    return {"type": "any", "of": alternatives}


def Choice(*choices, null=False):  # noqa: N802
    return Str(null=null, choices=choices)


DATASET_NAMES = ("esc50", "tinysol", "vocalsound", "folder")  # data.datasets.DATASETS
RECIPE_NAMES = ("coarse", "fine", "full", "identity")  # methods.residual.maths.RECIPES
_DATA = "data.{" + "|".join(DATASET_NAMES) + "}"
_RECIPE = "residual.recipes.{" + "|".join(RECIPE_NAMES) + "}"

SCHEMA: dict[str, dict] = {
    "seed": Int(min=0),
    "datasets": List(Choice(*DATASET_NAMES), min_len=1, unique=True),
    f"{_DATA}.source": Any_(Str(null=True), List(Str(), min_len=1)),
    f"{_DATA}.sha256": Any_(Str(null=True), List(Str(null=True), min_len=1)),
    f"{_DATA}.limit": Int(min=1, null=True),
    f"{_DATA}.csv": Str(null=True),
    "download.max_unpacked_mb": Num(min=0, min_open=True),
    "download.max_members": Int(min=1),
    "model.checkpoint": Str(),
    "model.checkpoint_sha256": Str(null=True),
    "model.variant": Choice("tiny", "base"),
    "model.tokenizer": Str(null=True),
    "preprocess.crop": Any_(Choice("start", "center"), Int(min=0)),
    "preprocess.batch_size": Int(min=1),
    "preprocess.min_seconds": Num(min=0),
    "preprocess.front_end": Choice("exact", "laion_api"),
    "extract.batch_size": Int(min=1),
    "extract.device": Choice(*DEVICES),
    "extract.regimes": List(Choice("pre", "post", "direct"), min_len=1, unique=True),
    "inject_layers": List(Int(min=0, max=3), min_len=1, unique=True),
    "zeroshot.templates": List(Str(), min_len=1),
    "cv.scheme": Choice("official", "stratified"),
    "cv.k": Int(min=2),
    "cv.val_fraction": Num(min=0, max=1, min_open=True, max_open=True),
    "methods": List(Str(), min_len=1, unique=True),  # names checked against the registry by the train stage
    "live": Bool(),
    "residual.granularity": Choice("head", "stage"),
    "residual.inject.recipe": Choice(*RECIPE_NAMES),
    "residual.inject.micro_batch": Int(min=1),
    "residual.bases_on": Choice("fit", "unlabelled"),
    f"{_RECIPE}.units": Choice("heads", "heads+mlp"),
    f"{_RECIPE}.pca": Bool(),
    f"{_RECIPE}.variance": Num(min=0, max=1, min_open=True),
    f"{_RECIPE}.beyond": Choice("keep", "drop"),
    f"{_RECIPE}.lam_init": Choice("ones", "normal"),
    f"{_RECIPE}.add_mean": Bool(),
    f"{_RECIPE}.others": Choice("keep", "remove"),
    f"{_RECIPE}.lr": Any_(Num(min=0, min_open=True), List(Num(min=0, min_open=True), min_len=1)),
    f"{_RECIPE}.max_epochs": Int(min=0, max=30),
    f"{_RECIPE}.patience": Int(min=1),
    f"{_RECIPE}.batch_size": Int(min=1),
    f"{_RECIPE}.select_on": Choice("val_accuracy", "val_loss"),
    f"{_RECIPE}.warmup_epochs": Int(min=0),
    "train.max_epochs": Int(min=0, max=30),
    "train.patience": Int(min=1),
    "train.batch_size": Int(min=1),
    "train.weight_decay": Num(min=0),
    "train.select_on": Choice("val_accuracy", "val_loss"),
    "train.device": Choice(*DEVICES),
    "baselines.linear.lr": List(Num(min=0, min_open=True), min_len=1),
    "baselines.linear.init": Choice("default", "identity"),
    "baselines.spectral_out.lr": List(Num(min=0, min_open=True), min_len=1),
    "baselines.spectral_out.lam_init": Choice("ones", "normal"),
    "baselines.spectral_out.add_mean": Bool(),
    "baselines.linear_adapter.lr": List(Num(min=0, min_open=True), min_len=1),
    "fewshot.shots": List(Int(min=1), min_len=1, unique=True),
    "fewshot.seeds": Int(min=1),
    "fewshot.methods": List(Str(), min_len=1, unique=True),
    "fewshot.inject": Bool(),
    "tip_adapter.alpha": List(Num(min=0), min_len=1),
    "tip_adapter.beta": List(Num(min=0, min_open=True), min_len=1),
    "tip_adapter.epochs": Int(min=0),
    "prompt_learning.epochs": Any_(Choice("coop"), Int(min=0)),
    "probe.C": List(Num(min=0, min_open=True), min_len=1),
    "ablation.total": Bool(),
    "ablation.stages": List(Int(min=0, max=3), min_len=1, unique=True),
    "ablation.device": Choice(*DEVICES),
    "ablation.batch_size": Int(min=1),
    "geometry.regimes": List(Choice("pre", "post"), min_len=1, unique=True),
    "geometry.mle_k": Int(min=3, max=200),
    "geometry.twonn_discard": Num(min=0, max=0.5),
    "geometry.duplicate_rtol": Num(min=0),
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
        text = "a string"
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
