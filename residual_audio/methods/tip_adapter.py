"""Tip-Adapter (training-free cache model) and Tip-Adapter-F (cache keys fine-tuned), as estimators.

Zhang et al. 2022 (Tip-Adapter, ECCV), used for audio by Treff-Adapter: the fitting clips
form a cache whose keys are their normalised 512-d audio embeddings and whose values are
their one-hot labels. A test clip with audio embedding a gets

    logits = zero-shot logits + α · exp(−β (1 − a Kᵀ)) L

so α = 0 is exactly the zero-shot model. By default α and β are the paper's fixed values (α = 1,
β = 5.5); a grid (`tip_adapter.alpha`, `tip_adapter.beta` as lists, or `tuning.mode: grid`, the
original's `search_hp` lists) is searched on the validation clips, and without validation clips
a grid falls back to the paper's initial values (α = β = 1). α is on CLIP's logit scale of 100
(`alpha_unit: clip`): the cache is weighted by α · (CLAP's logit scale / 100). Tip-Adapter-F trains the keys only, with the
paper's recipe (AdamW lr 0.001, eps 1e-4, cosine schedule, 20 epochs, batch 256,
training at the initial α, β), keeps the epoch with the best validation accuracy and then
searches α, β on the validation clips as Tip-Adapter does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.params import get
from ..evaluation.zeroshot import FrozenHead
from .base import Estimator, FoldData, register

ALPHA_GRID = (0.1, 0.5, 1.0, 2.0, 3.0)  # the paper's search range for α (ImageNet: 0.1–3)
BETA_GRID = (0.5, 1.0, 2.0, 3.5, 5.5, 7.0)  # the paper's search range for β (ImageNet: 0.1–7)
INIT_ALPHA, INIT_BETA = 1.0, 1.0  # the paper's starting values (training, and no validation clips)
# Tip-Adapter-F's published fine-tuning recipe
F_LR, F_EPS, F_EPOCHS, F_BATCH = 1e-3, 1e-4, 20, 256


def audio_and_zeroshot(text, embedding: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised 512-d audio embeddings, zero-shot logits) of pooled 768-d embeddings.

    The same operations as `zeroshot.zeroshot_logits`, so the zero-shot part is identical to it."""
    head = FrozenHead(text)
    with torch.no_grad():
        audio = head.audio_embed(head.pre(torch.as_tensor(np.asarray(embedding, dtype=np.float32))))
        return audio, head.logits_from_audio(audio)


def cache_logits(audio: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
    """exp(−β (1 − a Kᵀ)) L: the cache's vote for each class."""
    return torch.exp(-beta * (1 - audio @ keys.T)) @ values


def search(zs: torch.Tensor, cache_by_beta, labels: np.ndarray, alphas, betas) -> tuple[float, float, float]:
    """(α, β, accuracy) with the best validation accuracy; ties go to the first in grid order."""
    y = torch.as_tensor(labels)
    best = (float(alphas[0]), float(betas[0]), -1.0)
    for b in betas:
        cache = cache_by_beta(float(b))
        for a in alphas:
            acc = float(((zs + float(a) * cache).argmax(1) == y).float().mean())
            if acc > best[2]:
                best = (float(a), float(b), acc)
    return best


def _grid(params: dict, key: str) -> tuple:
    return tuple(float(v) for v in get(params, key))


def search_lists(scale, step) -> tuple[tuple, tuple]:
    """(α list, β list) of Tip-Adapter's `search_hp` (utils.py): β_i = i (scale_β − 0.1) / step_β + 0.1 for
    i < step_β, and α the same with the α scale and step (values on CLIP's logit scale of 100)."""
    betas = tuple(i * (float(scale[0]) - 0.1) / int(step[0]) + 0.1 for i in range(int(step[0])))
    alphas = tuple(i * (float(scale[1]) - 0.1) / int(step[1]) + 0.1 for i in range(int(step[1])))
    return alphas, betas


def _hyper(params: dict) -> tuple[tuple, tuple, str]:
    """(α grid, β grid, α unit) as `tuning.mode` asks: the params' values, or the original's search lists."""
    search = search_lists(get(params, "tuning.tip_search_scale"), get(params, "tuning.tip_search_step"))
    given = _grid(params, "tip_adapter.alpha"), _grid(params, "tip_adapter.beta")  # every key read in either mode
    alphas, betas = search if get(params, "tuning.mode") == "grid" else given
    return alphas, betas, get(params, "tip_adapter.alpha_unit")


@register
class TipAdapter(Estimator):
    """Training-free cache model on the fitting clips; α, β chosen on the validation clips."""

    name = "tip_adapter"
    needs = frozenset({"validation"})

    def __init__(self, alpha=ALPHA_GRID, beta=BETA_GRID, alpha_unit: str = "raw"):
        self.alpha = tuple(alpha)
        self.beta = tuple(beta)
        self.alpha_unit = alpha_unit

    @classmethod
    def from_params(cls, params: dict) -> "TipAdapter":
        alphas, betas, unit = _hyper(params)
        return cls(alphas, betas, unit)

    def _scale(self, text) -> float:
        """What α is multiplied by: CLAP's logit scale / 100 when α is given on CLIP's scale (`alpha_unit: clip`)."""
        return float(text.logit_scale) / 100.0 if self.alpha_unit == "clip" else 1.0

    def _votes(self, audio: torch.Tensor, keys: torch.Tensor, beta: float) -> torch.Tensor:
        """The cache's vote (`cache_logits`) in the units α multiplies: scaled by `alpha_scale_`."""
        return self.alpha_scale_ * cache_logits(audio, keys, self.values_, beta)

    def _cache(self, data: FoldData) -> None:
        idx = np.asarray(data.split.train)
        self.alpha_scale_ = self._scale(data.text)
        self.keys_, _ = audio_and_zeroshot(data.text, data.store.embedding[idx])
        self.values_ = F.one_hot(torch.as_tensor(data.labels[idx]), data.n_classes).float()

    def _choose(self, data: FoldData) -> None:
        """α, β from the grid on the validation clips (the single grid point, or the paper's
        initial values when there are no validation clips)."""
        val = np.asarray(data.split.val)
        if len(self.alpha) == 1 and len(self.beta) == 1:
            self.alpha_, self.beta_, self.val_acc_ = self.alpha[0], self.beta[0], float("nan")
        elif len(val) == 0:
            self.alpha_, self.beta_, self.val_acc_ = INIT_ALPHA, INIT_BETA, float("nan")
        else:
            audio, zs = audio_and_zeroshot(data.text, data.store.embedding[val])
            with torch.no_grad():
                self.alpha_, self.beta_, self.val_acc_ = search(
                    zs, lambda b: self._votes(audio, self.keys_, b), data.labels[val], self.alpha, self.beta)

    def fit(self, data: FoldData) -> "TipAdapter":
        self._cache(data)
        self._choose(data)
        self.n_params_ = 0
        self.history_ = [dict(alpha=self.alpha_, beta=self.beta_, val_acc=self.val_acc_)]
        return self

    def logits(self, data: FoldData, idx: np.ndarray) -> np.ndarray:
        self._check_fitted()
        audio, zs = audio_and_zeroshot(data.text, data.store.embedding[np.asarray(idx)])
        with torch.no_grad():
            cache = self._votes(audio, self.keys_, self.beta_)
        return (zs + self.alpha_ * cache).numpy()

    def artefacts(self) -> dict[str, np.ndarray]:
        return {"keys": self.keys_.numpy(), "values": self.values_.numpy(),
                "alpha": np.float64(self.alpha_), "beta": np.float64(self.beta_), "alpha_scale": np.float64(self.alpha_scale_)}


@register
class TipAdapterF(TipAdapter):
    """Tip-Adapter with the cache keys fine-tuned (the paper's recipe), α, β searched afterwards."""

    name = "tip_adapter_f"

    def __init__(self, alpha=ALPHA_GRID, beta=BETA_GRID, epochs: int = F_EPOCHS, lr: float = F_LR, alpha_unit: str = "raw"):
        super().__init__(alpha, beta, alpha_unit)
        self.epochs = epochs
        self.lr = lr

    @classmethod
    def from_params(cls, params: dict) -> "TipAdapterF":
        alphas, betas, unit = _hyper(params)
        return cls(alphas, betas, get(params, "tip_adapter.epochs"), alpha_unit=unit)

    def fit(self, data: FoldData) -> "TipAdapterF":
        self._cache(data)
        fit_idx, val = np.asarray(data.split.train), np.asarray(data.split.val)
        x, _ = audio_and_zeroshot(data.text, data.store.embedding[fit_idx])
        x_zs = FrozenHead(data.text).logits_from_audio(x).detach()
        y = torch.as_tensor(data.labels[fit_idx])
        if len(val):
            xv, zv = audio_and_zeroshot(data.text, data.store.embedding[val])
            yv = torch.as_tensor(data.labels[val])
        keys = torch.nn.Parameter(self.keys_.clone())
        opt = torch.optim.AdamW([keys], lr=self.lr, eps=F_EPS)
        steps = max(1, int(np.ceil(len(y) / F_BATCH)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.epochs * steps))
        gen = torch.Generator().manual_seed(int(data.seed))
        best = (-1.0, keys.detach().clone(), 0)
        history = []
        for epoch in range(self.epochs + 1):
            if epoch:  # epoch 0 is the training-free cache
                total = 0.0
                for b in torch.randperm(len(y), generator=gen).split(F_BATCH):
                    logits = x_zs[b] + INIT_ALPHA * self._votes(x[b], keys, INIT_BETA)
                    loss = F.cross_entropy(logits, y[b])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += loss.item() * len(b)
            with torch.no_grad():
                row = dict(epoch=epoch, train_loss=total / len(y) if epoch else float("nan"), val_acc=float("nan"))
                if len(val):
                    pred = (zv + INIT_ALPHA * self._votes(xv, keys, INIT_BETA)).argmax(1)
                    row["val_acc"] = float((pred == yv).float().mean())
                    if row["val_acc"] > best[0]:
                        best = (row["val_acc"], keys.detach().clone(), epoch)
                else:
                    best = (float("nan"), keys.detach().clone(), epoch)
            history.append(row)
        self.keys_, self.best_epoch_ = best[1], best[2]
        self._choose(data)
        self.n_params_ = int(keys.numel())
        self.history_ = history + [dict(alpha=self.alpha_, beta=self.beta_, val_acc=self.val_acc_, best_epoch=self.best_epoch_)]
        return self
