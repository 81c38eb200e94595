"""The baselines as estimators: zero-shot, a logistic-regression probe, the paper's "Linear"
and "Spectral out", and a 512×512 adapter on the normalised embedding.

"Output embedding" is CLAP's 512-d joint-space audio embedding before normalisation
(`FrozenHead.output`): the space the paper's Linear and Spectral-out baselines act on.
Every trained baseline is fitted on the fitting clips `split.train`, picks its learning
rate (or C) from a small grid on the validation clips `split.val`, and keeps its
best-validation epoch; none is refitted on the validation clips.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from ..core.params import ParamError, get
from ..evaluation.zeroshot import FrozenHead
from .base import Estimator, FoldData, register
from .residual.maths import unit_pca
from .training import TrainConfig, evaluate, train_grid, trainable_count


def output_embedding(text, embedding: np.ndarray) -> torch.Tensor:
    """CLAP's joint-space audio embedding before normalisation, from pooled 768-d embeddings."""
    head = FrozenHead(text)
    with torch.no_grad():
        return head.output(head.pre(torch.from_numpy(np.asarray(embedding, dtype=np.float32))))


CHUNK, EVAL_BATCH = 256, 4096  # clips per first-layer product and per scoring pass (as `training.evaluate`)


def pooled_pre(head: FrozenHead, embedding: np.ndarray) -> torch.Tensor:
    """W₁ e + b₁ of pooled embeddings, `CHUNK` clips at a time: every method that scores the exact
    embedding computes it with the same products, so an untrained identity map equals zero-shot
    bit for bit whatever the number of clips."""
    with torch.no_grad():
        e = np.asarray(embedding, dtype=np.float32)
        parts = [head.pre(torch.from_numpy(e[i : i + CHUNK])) for i in range(0, len(e), CHUNK)]
        return torch.cat(parts) if parts else torch.zeros(0, head.w1.shape[0])


def train_config(params: dict, seed: int = 0) -> TrainConfig:
    """The shared training settings of the trained baselines (`train.*`), checked."""
    return TrainConfig(max_epochs=get(params, "train.max_epochs"), patience=get(params, "train.patience"),
                       batch_size=get(params, "train.batch_size"), weight_decay=get(params, "train.weight_decay"),
                       monitor=get(params, "train.select_on"), seed=seed,
                       select_from_epoch=get(params, "train.select_from_epoch"))


def lr_grid(params: dict, key: str) -> tuple:
    """The learning rates under `key` (a number or a list of them) as a tuple of floats, as `tuning.mode`
    asks: `published`, the values given; `grid`, the value (the middle of a list) times `tuning.lr_factors`."""
    return tuned_lrs(params, get(params, key))


def tuned_lrs(params: dict, value) -> tuple:
    """`value` (a learning rate or a list of them) under `tuning.mode` (see `lr_grid`)."""
    lrs = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    mode, factors = get(params, "tuning.mode"), get(params, "tuning.lr_factors")  # both read in either mode
    if mode == "published":
        return tuple(lrs)
    base = sorted(lrs)[(len(lrs) - 1) // 2]
    return tuple(base * float(f) for f in factors)


def _idx(data: FoldData):
    s = data.split
    return s.train, s.val


@register
class ZeroShot(Estimator):
    """CLAP's zero-shot classifier on the stored pooled embedding; nothing is learned."""

    name = "zeroshot"
    exportable = True

    def fit(self, data: FoldData) -> "ZeroShot":
        self.n_params_, self.history_ = 0, []
        return self

    def state(self):
        return {}

    def restore(self, state, text):
        return self.fit(None)

    def logits(self, data: FoldData, idx) -> np.ndarray:
        self._check_fitted()
        head = FrozenHead(data.text)
        pre = pooled_pre(head, data.store.embedding[np.asarray(idx)])
        with torch.no_grad():
            return torch.cat([head(pre[i : i + EVAL_BATCH]) for i in range(0, len(pre), EVAL_BATCH)]).numpy()


@register
class LinearProbe(Estimator):
    needs = frozenset({"validation"})  # C is chosen on the validation clips
    """Logistic regression on the normalised 512-d audio embedding, fitted on the fitting clips,
    C chosen on the validation clips (no refit on them)."""

    name = "linear_probe"

    def __init__(self, C=(0.1, 1.0, 10.0, 100.0), seed: int = 0):
        self.C = tuple(C)
        self.seed = seed

    @classmethod
    def from_params(cls, params):
        return cls(tuple(float(c) for c in get(params, "probe.C")), get(params, "seed"))

    def _features(self, data, idx):
        return F.normalize(output_embedding(data.text, data.store.embedding[idx]), dim=-1).numpy()

    def _fit_one(self, c, x, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=c, max_iter=2000, random_state=self.seed).fit(x, y)

    def fit(self, data: FoldData) -> "LinearProbe":
        tr, va = _idx(data)
        y = data.labels
        xtr = self._features(data, tr)
        best, self.history_ = None, []
        for c in self.C:
            clf = self._fit_one(c, xtr, y[tr])
            acc = float((clf.predict(self._features(data, va)) == y[va]).mean()) if len(va) else float("nan")
            self.history_.append(dict(C=c, val_acc=acc))
            if best is None or (np.isfinite(acc) and acc > best[0]):
                best = (acc if np.isfinite(acc) else -np.inf, c, clf)
        if not len(va):  # no validation clips: the middle of the grid, as documented
            c = self.C[len(self.C) // 2]
            best = (np.nan, c, self._fit_one(c, xtr, y[tr]))
        _, self.C_, clf = best
        coef = np.zeros((data.n_classes, xtr.shape[1]), np.float32)
        intercept = np.full(data.n_classes, -np.inf, np.float32)  # classes absent from the fitting clips never win
        if len(clf.classes_) > 2:
            coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
        else:  # binary: sklearn's one decision function d, written as the logits (−d, d)
            coef[clf.classes_] = np.stack([-clf.coef_[0], clf.coef_[0]])
            intercept[clf.classes_] = np.array([-clf.intercept_[0], clf.intercept_[0]])
        self.coef_, self.intercept_ = coef, intercept
        self.n_params_ = int(clf.coef_.size + clf.intercept_.size)
        return self

    def logits(self, data, idx):
        self._check_fitted()
        return self._features(data, idx) @ self.coef_.T + self.intercept_

    exportable = True

    def state(self):
        return {**self.artefacts(), "n_params": np.int64(self.n_params_)}

    def restore(self, state, text):
        self.coef_, self.intercept_ = state["coef"].astype(np.float32), state["intercept"].astype(np.float32)
        self.C_, self.n_params_, self.history_ = float(state["C"]), int(state["n_params"]), []
        return self

    def artefacts(self):
        return {"coef": self.coef_, "intercept": self.intercept_, "C": np.float64(self.C_)}

    def chosen(self) -> dict:
        return {"C": float(self.C_)}


class _OutputModel(nn.Module):
    """A trainable map on the unnormalised 512-d output embedding, then normalisation and the frozen classifier."""

    def __init__(self, head: FrozenHead):
        super().__init__()
        self.head = head.requires_grad_(False)

    def adapt(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        return self.head.logits_from_audio(F.normalize(self.adapt(out), dim=-1))


class LinearMap(_OutputModel):
    """Paper's "Linear": y = W x + b (d×d with bias); PyTorch's default `nn.Linear` init (seeded)
    as the released code, or W = I, b = 0 (`init: identity`)."""

    def __init__(self, head, dim=512, init="default", seed=0):
        super().__init__(head)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = nn.Linear(dim, dim)
        if init == "identity":
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.weight, self.bias = layer.weight, layer.bias

    def adapt(self, out):
        return out @ self.weight.T + self.bias


class SpectralMap(_OutputModel):
    """Paper's "Spectral out": y = Φᵀ diag(λ) Φ (x − μ) [+ μ], PCA of the output embedding.

    `released`: y = (x − μ) ⊙ λ [+ μ], one λ per dimension, which is what the released code's
    `SpectralAdapter` computes: its square basis B enters as `einsum("nd,dk")` with λ on B's rows,
    then Bᵀ, so (x − μ) diag(λ) B Bᵀ = (x − μ) ⊙ λ, whatever B is."""

    def __init__(self, head, mean, components, lam0, add_mean, released=False):
        super().__init__(head)
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("components", torch.from_numpy(components))
        self.lam = nn.Parameter(torch.from_numpy(lam0))
        self.add_mean, self.released = add_mean, released

    def adapt(self, out):
        if self.released:
            y = (out - self.mean) * self.lam
        else:
            y = ((out - self.mean) @ self.components.T * self.lam) @ self.components
        return y + self.mean if self.add_mean else y


class NormalisedMap(_OutputModel):
    """Today's adapter: a 512×512 map (no bias) on the *normalised* embedding, identity at start."""

    def __init__(self, head, dim=512):
        super().__init__(head)
        self.weight = nn.Parameter(torch.eye(dim))

    def adapt(self, out):
        return F.normalize(out, dim=-1) @ self.weight.T


class _Trained(Estimator):
    needs = frozenset({"validation"})  # early stopping and the kept checkpoint (and any lr grid)
    """A map on the output embedding trained with schedule-free AdamW, lr chosen on validation."""

    lr_key = ""
    default_lr: tuple = (1e-3,)
    warmup_epochs = 0  # the released ResiDual code's baselines use none

    def __init__(self, lr=(1e-3,), max_epochs=30, patience=5, batch_size=64, select_on="val_accuracy", weight_decay=0.0,
                 seed=0, select_from_epoch=1):
        self.lr, self.max_epochs, self.patience, self.batch_size = tuple(lr), max_epochs, patience, batch_size
        self.select_on, self.weight_decay, self.seed = select_on, weight_decay, seed
        self.select_from_epoch = select_from_epoch

    @classmethod
    def from_params(cls, params):
        cfg = train_config(params)
        return cls(lr_grid(params, cls.lr_key), cfg.max_epochs, cfg.patience, cfg.batch_size,
                   cfg.monitor, cfg.weight_decay, get(params, "seed"), cfg.select_from_epoch)

    def _config(self, seed):
        return TrainConfig(max_epochs=self.max_epochs, patience=self.patience, batch_size=self.batch_size,
                           monitor=self.select_on, weight_decay=self.weight_decay, seed=seed, lr_key=self.lr_key,
                           warmup_epochs=self.warmup_epochs, select_from_epoch=self.select_from_epoch)

    def _make(self, data: FoldData, head: FrozenHead) -> nn.Module:
        raise NotImplementedError

    def fit(self, data: FoldData):
        tr, va = _idx(data)
        out = {k: output_embedding(data.text, data.store.embedding[i]) for k, i in (("train", tr), ("val", va))}
        head = FrozenHead(data.text)
        self._prepare(data, out["train"])
        model, self.history_, self.lr_, self.lr_scores_ = train_grid(
            lambda: self._make(data, head), self.lr, (out["train"],), data.labels[tr], (out["val"],), data.labels[va],
            self._config(data.seed), desc=self.name)
        self.model_ = model
        self.n_params_ = trainable_count(model)
        return self

    def _prepare(self, data, out_train) -> None:
        pass

    def logits(self, data, idx):
        self._check_fitted()
        _, _, logits = evaluate(self.model_, (output_embedding(data.text, data.store.embedding[idx]),),
                                torch.from_numpy(data.labels[idx]))
        return logits.numpy()

    def chosen(self) -> dict:
        return {"lr": self.lr_, "lr_scores": {f"{k:g}": v for k, v in self.lr_scores_.items()}}

    exportable = True

    def _own_state(self) -> dict:
        return {}

    def _restore_own(self, state: dict) -> None:
        pass

    def state(self):
        model = {f"model.{k}": v.detach().numpy().copy() for k, v in self.model_.state_dict().items()
                 if not k.startswith("head.")}
        return {**model, **self._own_state(), "n_params": np.int64(self.n_params_)}

    def restore(self, state, text):
        self._restore_own(state)
        self.model_ = self._make(FoldData(None, text, None, seed=0), FrozenHead(text))
        weights = {k[len("model."):]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith("model.")}
        missing, unexpected = self.model_.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if not k.startswith("head.")]:
            raise ValueError(f"{self.name}: the exported weights do not fit the model "
                             f"(missing {[k for k in missing if not k.startswith('head.')]}, unexpected {unexpected})")
        self.model_.eval()
        self.n_params_, self.history_ = int(state["n_params"]), []
        return self


@register
class Linear(_Trained):
    """The paper's "Linear" baseline: a d×d map with bias on the 512-d output embedding (lr 1e-3)."""

    name, lr_key, default_lr = "linear", "baselines.linear.lr", (1e-3,)

    def __init__(self, lr=(1e-3,), max_epochs=30, patience=5, batch_size=64, select_on="val_accuracy", weight_decay=0.0,
                 seed=0, init="default"):
        super().__init__(lr, max_epochs, patience, batch_size, select_on, weight_decay, seed)
        self.init = init

    @classmethod
    def from_params(cls, params):
        est = super().from_params(params)
        est.init = get(params, "baselines.linear.init")
        return est

    def _make(self, data, head):
        return LinearMap(head, head.w2.shape[0], self.init, data.seed)

    def artefacts(self):
        return {"weight": self.model_.weight.detach().numpy().copy(), "bias": self.model_.bias.detach().numpy().copy()}


@register
class SpectralOut(_Trained):
    """The paper's "Spectral out": PCA of the 512-d output embedding (fitting clips), one λ per component."""

    name, lr_key, default_lr = "spectral_out", "baselines.spectral_out.lr", (1e-3,)

    def __init__(self, lr=(1e-3,), max_epochs=30, patience=5, batch_size=64, select_on="val_accuracy", weight_decay=0.0,
                 seed=0, lam_init="normal", add_mean=False, reconstruct="paper"):
        super().__init__(lr, max_epochs, patience, batch_size, select_on, weight_decay, seed)
        self.lam_init, self.add_mean, self.reconstruct = lam_init, add_mean, reconstruct

    @classmethod
    def from_params(cls, params):
        est = super().from_params(params)
        est.lam_init = get(params, "baselines.spectral_out.lam_init")
        est.add_mean = get(params, "baselines.spectral_out.add_mean")
        est.reconstruct = get(params, "baselines.spectral_out.reconstruct")
        return est

    def _prepare(self, data, out_train):
        mu, _, phi = unit_pca(out_train.numpy())
        self.mean_, self.components_ = mu.astype(np.float32), phi.astype(np.float32)
        self.init_seed_ = int(data.seed)
        # released: one λ per dimension (its square basis cancels); with fewer fitting clips than dimensions the
        # released code stops on a shape error, and this is what it computes once the basis is complete
        n_lam = out_train.shape[1] if self.reconstruct == "released" else len(phi)
        self.lam0_ = init_lambda(n_lam, self.lam_init, self.init_seed_)

    def _make(self, data, head):
        return SpectralMap(head, self.mean_, self.components_, self.lam0_.copy(), self.add_mean,
                           released=self.reconstruct == "released")

    def _own_state(self):
        return {"mean": self.mean_, "components": self.components_, "lam0": self.lam0_}

    def _restore_own(self, state):
        self.mean_, self.components_ = state["mean"].astype(np.float32), state["components"].astype(np.float32)
        self.lam0_ = state["lam0"].astype(np.float32)

    def artefacts(self):
        return {"mean": self.mean_, "components": self.components_, "lam": self.model_.lam.detach().numpy().copy(),
                "init_seed": np.int64(self.init_seed_), "add_mean": np.bool_(self.add_mean),
                "reconstruct": np.array(self.reconstruct)}


@register
class LinearAdapter(_Trained):
    """A 512×512 map (no bias, identity at start) on the normalised embedding, then renormalised."""

    name, lr_key, default_lr = "linear_adapter", "baselines.linear_adapter.lr", (1e-3, 1e-2, 1e-1)
    warmup_epochs = 1

    def _make(self, data, head):
        return NormalisedMap(head, head.w2.shape[0])

    def artefacts(self):
        return {"weight": self.model_.weight.detach().numpy().copy()}


def init_lambda(n: int, how: str, seed: int) -> np.ndarray:
    """λ at start: ones, or 1 + N(0, 1) drawn from a generator seeded with `seed` (the paper's init)."""
    if how == "ones":
        return np.ones(n, np.float32)
    if how == "normal":
        gen = torch.Generator().manual_seed(int(seed))
        return (1 + torch.randn(n, generator=gen)).numpy().astype(np.float32)
    raise ParamError(f"params: λ init must be 'ones' or 'normal', got {how!r}")
