"""One evaluation protocol for every method: the same folds, the same validation splits.

`official` leaves one official fold out at a time; `stratified` draws `cv.k` stratified
folds with a fixed seed (for datasets without official folds, and for subsets holding
fewer than two of them). The validation split for early stopping is carved, stratified
and seeded, from the training folds only, so no test clip ever reaches fitting.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..core.params import ParamError

SCHEMES = ("official", "stratified")


@dataclass(frozen=True)
class Split:
    """One fold: indices into the store (sorted), and the name it is reported under."""

    name: str
    train: np.ndarray  # fitting clips (training folds minus validation)
    val: np.ndarray  # early-stopping clips (from the training folds)
    test: np.ndarray  # the held-out fold

    @property
    def train_all(self) -> np.ndarray:
        return np.sort(np.concatenate([self.train, self.val]))


def check_labels(labels: np.ndarray, n_classes: int, where: str) -> None:
    present = np.unique(labels)
    if len(present) < 2:
        raise ParamError(f"{where}: holds {len(present)} class; classification needs at least two")


def outer_folds(labels, folds, scheme: str, k: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, training indices, test indices) for every fold of the chosen scheme."""
    labels = np.asarray(labels)
    n = len(labels)
    if scheme not in SCHEMES:
        raise ParamError(f"params: 'cv.scheme' must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme == "official":
        official = np.unique(folds)
        if len(official) >= 2:
            return [(f"fold{int(f)}", np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in official]
        held = ("no official folds" if set(official.tolist()) <= {0}  # fold 0: a clip without one (folder datasets)
                else f"{len(official)} official fold")
        warnings.warn(f"cv.scheme is 'official' but the data hold {held}; using {k} stratified folds (cv.k) instead",
                      stacklevel=2)
    if not isinstance(k, int) or k < 2:
        raise ParamError(f"params: 'cv.k' must be an integer >= 2, got {k!r}")
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if counts.min() < k:
        raise ParamError(
            f"params: 'cv.k' = {k} is more than the {counts.min()} clips of the rarest class; "
            "some fold would have no example of it"
        )
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(f"fold{i}", np.sort(tr), np.sort(te)) for i, (tr, te) in enumerate(skf.split(np.zeros(n), labels))]


def validation_split(train_idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """Carve a seeded validation split off the training indices, stratified when it can be."""
    train_idx = np.asarray(train_idx)
    y = labels[train_idx]
    n_classes = len(np.unique(y))
    n_val = int(round(fraction * len(train_idx)))
    if fraction <= 0 or len(train_idx) < 4:
        if fraction > 0:
            warnings.warn(f"only {len(train_idx)} training clips: no validation split, no early stopping", stacklevel=2)
        return np.sort(train_idx), np.array([], dtype=np.int64)
    n_val = max(n_val, 1)
    stratify = y
    counts = np.bincount(y)
    if n_val < n_classes or len(train_idx) - n_val < n_classes or counts[counts > 0].min() < 2:
        warnings.warn(
            f"validation split of {n_val} from {len(train_idx)} training clips over {n_classes} classes "
            "is too small to stratify; drawing it at random",
            stacklevel=2,
        )
        stratify = None
    tr, va = train_test_split(train_idx, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


def make_splits(labels, folds, scheme: str, k: int, seed: int, val_fraction: float, warn: bool = True) -> list[Split]:
    """Every fold with its validation split; checks each side holds every class.

    `warn=False` silences the protocol's warnings (scheme fallback, small validation splits):
    the `train` stage decides the folds and says so; later stages that rebuild the same folds
    do not repeat it."""
    if not warn:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return make_splits(labels, folds, scheme, k, seed, val_fraction)
    labels = np.asarray(labels, dtype=np.int64)
    check_labels(labels, labels.max() + 1 if len(labels) else 0, "dataset")
    classes = np.unique(labels)
    splits = []
    for i, (name, train, test) in enumerate(outer_folds(labels, np.asarray(folds), scheme, k, seed)):
        for side, idx in (("training folds", train), ("test fold", test)):
            missing = np.setdiff1d(classes, labels[idx])
            if len(missing):
                raise ParamError(
                    f"params: 'cv.scheme' = {scheme!r}: {name} {side} hold no example of class "
                    f"{', '.join(map(str, missing[:5]))}{' …' if len(missing) > 5 else ''}"
                )
        tr, va = validation_split(train, labels, val_fraction, seed + i)
        splits.append(Split(name, tr, va, np.sort(test)))
    return splits
