"""Reading `params.yaml`: nested keys addressed as 'a.b.c', with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ParamError(ValueError):
    """A parameter is missing or out of range; the message names the key."""


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


def get(params: dict, key: str, default: Any = _MISSING) -> Any:
    """Return params['a']['b'] for key 'a.b'; raise ParamError naming the key if absent."""
    node: Any = params
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif default is not _MISSING:
            return default
        else:
            raise ParamError(f"params: missing key '{key}'")
    return node


def check(condition: bool, key: str, message: str) -> None:
    """Raise ParamError('<key>: <message>') unless condition holds."""
    if not condition:
        raise ParamError(f"params: '{key}' {message}")


def dataset_names(params: dict) -> list[str]:
    """The validated `datasets` list: distinct names of known datasets, at least one."""
    from ..data.datasets import DATASETS

    names = get(params, "datasets")
    check(isinstance(names, list) and names and all(isinstance(n, str) for n in names), "datasets",
          f"must be a non-empty list of dataset names ({', '.join(DATASETS)}), got {names!r}")
    unknown = [n for n in names if n not in DATASETS]
    check(not unknown, "datasets", f"names unknown dataset(s) {unknown}; known datasets: {', '.join(DATASETS)}")
    check(len(set(names)) == len(names), "datasets", f"lists a dataset twice: {names}")
    return list(names)


def check_dataset(params: dict, name: str) -> str:
    """`name` (a per-dataset stage's argument), checked to be listed in `datasets`."""
    names = dataset_names(params)
    check(name in names, "datasets", f"does not list {name!r} (it lists {', '.join(names)})")
    return name
