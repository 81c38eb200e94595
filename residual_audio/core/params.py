"""Reading `params.yaml`: nested keys addressed as 'a.b.c', with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ParamError
from .schema import NO_DEFAULT, default

__all__ = ["ParamError", "check", "check_dataset", "dataset_names", "get", "given", "load_params"]


_MISSING = object()


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, again: int):
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: the base loader refuses it
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamError(f"{path}: parameter file not found")
    try:
        with open(path) as f:
            params = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as exc:
        raise ParamError(f"{path}, lines {exc.first} and {exc.again}: key {exc.key!r} is given twice "
                         "(YAML would keep the last silently)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamError(f"{path}{where}: not valid YAML ({what})") from None
    except UnicodeDecodeError as exc:
        raise ParamError(f"{path}: not a text file ({exc.reason})") from None
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping at the top level")
    return params


def get(params: dict, key: str) -> Any:
    """params['a']['b'] for key 'a.b', or the schema's default for a key the file leaves out (a
    prefix gives the mapping of its leaves, defaults filled in); ParamError naming a key that is
    neither given nor has a default. The schema (core/schema.py) is the one table of defaults."""
    node: Any = params
    parts = key.split(".")
    for i, part in enumerate(parts):
        present = isinstance(node, dict) and part in node
        if present and (node[part] is not None or (i == len(parts) - 1 and not isinstance(default(key), dict))):
            node = node[part]
            continue
        value = default(key)  # left out (or a null mapping): the schema's default
        if value is NO_DEFAULT:
            raise ParamError(f"params: missing key '{key}'")
        return value
    if isinstance(node, dict):
        fallback = default(key)
        if isinstance(fallback, dict):
            return _merged(fallback, node)
    return node


def given(params: dict, key: str, missing: Any = None) -> Any:
    """The value `params.yaml` itself gives for `key` (no default), or `missing`."""
    node: Any = params
    for part in key.split("."):
        if not (isinstance(node, dict) and part in node):
            return missing
        node = node[part]
    return node


def _merged(defaults: dict, node: dict) -> dict:
    out = dict(defaults)
    for k in node:  # keys in the file's order after the defaults' (reads go through `node[k]`)
        value = node[k]
        out[k] = _merged(defaults[k], value) if isinstance(value, dict) and isinstance(defaults.get(k), dict) else value
    return out


def check(condition: bool, key: str, message: str) -> None:
    """Raise ParamError('<key>: <message>') unless condition holds."""
    if not condition:
        raise ParamError(f"params: '{key}' {message}")


def dataset_names(params: dict) -> list[str]:
    """The `datasets` list (the schema checked it: distinct names of known datasets, at least one)."""
    return list(get(params, "datasets"))


def check_dataset(params: dict, name: str) -> str:
    """`name` (a per-dataset stage's argument), checked to be listed in `datasets`."""
    names = dataset_names(params)
    check(name in names, "datasets", f"does not list {name!r} (it lists {', '.join(names)})")
    return name
