"""Adaptation methods as estimators (scikit-learn style), in one registry filled by static imports.

Each method module registers its classes with ``@register`` when imported; importing this package
imports them all, so the registry is complete wherever a method is built, and every stage that builds
methods imports (and depends on) each of them. A new method is one module plus one line here.
"""

from ..core.params import ParamError
from . import baselines, prompt_learning, tip_adapter  # noqa: F401  (they register their methods)
from .base import REGISTRY, Estimator, FoldData, register
from .residual import inject, recipes  # noqa: F401

__all__ = ["REGISTRY", "Estimator", "FoldData", "available", "build", "check_names", "register"]


def available() -> list[str]:
    return sorted(REGISTRY)


def check_names(names, key: str = "methods") -> list[str]:
    """`names` (the schema checked them to be distinct strings), each a registered method, or a
    ParamError naming `key`: the one check the schema cannot make, since it precedes the registry."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ParamError(f"params: '{key}' names unknown method(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(sorted(REGISTRY))})")
    return list(names)


def build(name: str, params: dict, key: str = "methods") -> Estimator:
    """A fresh estimator for method `name`, hyper-parameters from params.yaml."""
    check_names([name], key)
    return REGISTRY[name].from_params(params)
