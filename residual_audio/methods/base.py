"""One interface for every adaptation method, and the registry that names them.

Every method the pipeline compares (zero-shot, probes, adapters, ResiDual recipes, peer
methods) is an estimator in the scikit-learn style:

- hyper-parameters are keyword arguments of ``__init__`` and are stored unchanged;
- ``fit(data)`` learns from one fold: it may use the fitting clips ``data.split.train`` with
  their labels, select (learning rate, C, early stopping, ...) on ``data.split.val``, and
  must never look at ``data.split.test``;
- fitted state lives in attributes with a trailing underscore (``lam_``, ``n_params_``,
  ``history_``), set by ``fit`` only;
- ``logits(data, idx)`` scores any clips of the store with the fitted state;
- ``artefacts()`` returns the fitted state as named numpy arrays, so that everything a
  fold learned can be saved and every logit recomputed from the stores and the artefacts.

A method is registered under its public name with ``@register``; the registry is filled by the
static imports of ``residual_audio.methods``, whose ``build(name, params)`` makes one from
``params.yaml`` through the class's ``from_params``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..evaluation.protocol import Split


@dataclass
class FoldData:
    """What a method may see for one fold.

    `store` holds every clip of the dataset (direct units, embeddings, labels; see
    `units.UnitStore`), `text` the cached zero-shot head (`zeroshot.TextSide`), `split` the
    fold's fitting / validation / test indices into the store. `unlabelled` lists clips whose
    audio (not labels) a method may use, e.g. to fit PCA bases on every training-fold clip
    in few-shot runs; by default the whole training side (fitting + validation clips).
    `context` carries lazily built shared resources (the encoder and its cached entry
    streams for inject mode, the tokenizer and text encoder for prompt learning), keyed by
    name, so folds and methods reuse them.
    """

    store: Any
    text: Any
    split: Split
    seed: int = 0
    unlabelled: np.ndarray | None = None
    context: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.store.label

    @property
    def n_classes(self) -> int:
        return len(self.store.classes)

    def unlabelled_clips(self) -> np.ndarray:
        return self.split.train_all if self.unlabelled is None else np.asarray(self.unlabelled)


class Estimator:
    """Base class: subclasses set `name`, implement `fit`, `logits` and (if they learn) `artefacts`."""

    name: ClassVar[str] = ""
    # what the method needs beyond stored tensors, e.g. {"encoder"} or {"text_encoder"};
    # "validation": it selects hyper-parameters on validation clips (the few-shot protocol
    # then draws k per class for it; methods without it get none and use fixed values)
    needs: ClassVar[frozenset] = frozenset()

    @classmethod
    def from_params(cls, params: dict) -> "Estimator":
        """The estimator with its hyper-parameters read (and checked) from params.yaml."""
        return cls()

    def fit(self, data: FoldData) -> "Estimator":
        raise NotImplementedError

    def logits(self, data: FoldData, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def artefacts(self) -> dict[str, np.ndarray]:
        """Fitted state as named arrays (empty for training-free methods)."""
        return {}

    # export (adapted.export): whether `state()` / `restore()` carry everything `logits` needs
    exportable: ClassVar[bool] = False

    def state(self) -> dict[str, np.ndarray]:
        """Everything `logits` needs after `fit`, as named arrays (see `restore`)."""
        raise NotImplementedError(f"{self.name} cannot be exported")

    def restore(self, state: dict, text) -> "Estimator":
        """The fitted estimator again from `state()` and the text side it was fitted with."""
        raise NotImplementedError(f"{self.name} cannot be exported")

    @classmethod
    def from_hyper(cls, hyper: dict) -> "Estimator":
        """The estimator from its `get_params()` as JSON gave them back (lists for tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()})

    def get_params(self) -> dict:
        """The hyper-parameters given to __init__ (scikit-learn convention)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_params_"):
            raise RuntimeError(f"{self.name}: call fit() before logits()")


REGISTRY: dict[str, type[Estimator]] = {}


def register(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: make the method available under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls
