"""Adaptation methods as estimators (scikit-learn style), in one registry filled by static imports.

Each method module registers its classes with ``@register`` when imported; importing this package
imports them all, so the registry is complete wherever a method is built, and every stage that builds
methods imports (and depends on) each of them. A new method is one module plus one line here.
"""

from ..core.params import ParamError
from . import baselines, prompt_learning, tip_adapter  # noqa: F401  (they register their methods)
from .base import REGISTRY, Estimator, FoldData, register
from .residual import inject, recipes  # noqa: F401

__all__ = ["REGISTRY", "Estimator", "FoldData", "available", "build", "register"]


def available() -> list[str]:
    return sorted(REGISTRY)


def build(name: str, params: dict) -> Estimator:
    """A fresh estimator for method `name`, hyper-parameters from params.yaml."""
    if name not in REGISTRY:
        raise ParamError(f"params: 'methods' names unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name].from_params(params)
