"""Training loop shared by ResiDual and the linear adapter.

Cross-entropy on the scaled logits, schedule-free AdamW, at most `max_epochs` epochs,
early stopping (patience on validation loss or accuracy, `monitor`) with the
best-validation weights restored, as the ResiDual paper does.
Schedule-free AdamW evaluates at averaged weights: `optimizer.eval()` swaps them in
before every validation pass and at the end, `optimizer.train()` swaps them back out.
Epoch 0 is the untrained model, so `max_epochs: 0` returns it exactly. `select_from_epoch` is the
first epoch whose checkpoint may be kept: 1 (as the released ResiDual code, whose callbacks first
evaluate after epoch 1: the untrained state never competes) or 0; with fewer epochs than that, the
last epoch is kept.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from schedulefree import AdamWScheduleFree

from ..core import logs
from ..core.params import ParamError

MONITORS = ("val_loss", "val_accuracy")


@dataclass(frozen=True)
class TrainConfig:
    max_epochs: int = 30
    lr: float = 1e-2
    patience: int = 5
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.0
    lr_find: bool = False
    eval_batch: int = 4096  # clips per no-grad evaluation pass (small when every pass runs the model)
    batch_progress: bool = False  # a progress bar per epoch, for slow (model-forward) epochs
    monitor: str = "val_loss"  # early stopping and checkpoint choice: val_loss (lower) | val_accuracy (higher)
    lr_key: str = "train.lr"  # the params key named when the loss diverges
    warmup_epochs: int = 1  # schedule-free AdamW warm-up, in epochs (0: none, as the ResiDual code)
    select_from_epoch: int = 1  # the first epoch whose checkpoint may be kept (0: the untrained model competes)


def trainable_count(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


@torch.no_grad()
def evaluate(model, inputs: tuple, labels: torch.Tensor, batch: int = 4096) -> tuple[float, float, torch.Tensor]:
    """(mean cross-entropy, accuracy, logits) over all clips."""
    n = len(labels)
    if n == 0:
        return float("nan"), float("nan"), torch.zeros(0)
    logits = torch.cat([model(*(x[i : i + batch] for x in inputs)) for i in range(0, n, batch)])
    loss = float(F.cross_entropy(logits, labels))
    return loss, float((logits.argmax(1) == labels).float().mean()), logits


def _check_loss(loss: torch.Tensor, epoch: int, lr: float, key: str = "train.lr") -> None:
    if not torch.isfinite(loss):
        raise ParamError(
            f"params: '{key}' = {lr}: the training loss became {loss.item()} at epoch {epoch}; "
            "lower the learning rate (nothing was written)"
        )


def _optimizer(model, cfg: TrainConfig, lr: float, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    return AdamWScheduleFree(params, lr=lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_epochs * steps_per_epoch)


def lr_range_test(model, inputs: tuple, labels: torch.Tensor, cfg: TrainConfig, lo=1e-4, hi=1.0, steps=60) -> float:
    """Leslie Smith's range test: a tenth of the lr at the loss minimum.

    The learning rate grows geometrically from `lo` to `hi` over `steps` mini-batches
    (plain AdamW), stopping early once the loss diverges. The model's trainable state is
    restored afterwards (the model is not copied: it may hold a frozen encoder by reference).
    """
    saved = copy.deepcopy(model.state_dict())
    try:
        return _range_test(model, inputs, labels, cfg, lo, hi, steps)
    finally:
        model.load_state_dict(saved)


def _range_test(model, inputs, labels, cfg, lo, hi, steps) -> float:
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lo)
    lrs = np.geomspace(lo, hi, steps)
    losses = []
    n = len(labels)
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = float(lr)
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        loss = F.cross_entropy(model(*(x[idx] for x in inputs)), labels[idx])
        if not torch.isfinite(loss) or (losses and loss.item() > 4 * min(losses)):
            break
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    if not losses:
        return float(lo)
    smooth = np.convolve(losses, np.ones(3) / 3, mode="same") if len(losses) >= 3 else np.asarray(losses)
    return float(lrs[int(np.argmin(smooth))]) / 10


def train(model, train_inputs: tuple, train_labels, val_inputs: tuple, val_labels, cfg: TrainConfig, desc="train",
          on_epoch=None):
    """Fit the trainable parameters; returns (history rows, chosen lr). The model ends at its best epoch.
    `on_epoch(row)` is called with each epoch's history row as soon as it is known (live logging)."""
    model.eval()  # the frozen parts never switch to training behaviour
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    val_labels = torch.as_tensor(val_labels, dtype=torch.long)
    n = len(train_labels)
    steps = max(1, math.ceil(n / cfg.batch_size))
    lr = lr_range_test(model, train_inputs, train_labels, cfg) if cfg.lr_find and cfg.max_epochs else float(cfg.lr)
    opt = _optimizer(model, cfg, lr, steps)
    has_val = len(val_labels) > 0
    opt.eval()
    val_loss, val_acc, _ = evaluate(model, val_inputs, val_labels, cfg.eval_batch) if has_val else (float("nan"),) * 2 + (None,)
    train_loss, train_acc, _ = evaluate(model, train_inputs, train_labels, cfg.eval_batch)
    history = [dict(epoch=0, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc, lr=lr)]
    if on_epoch is not None:
        on_epoch(history[0])

    def score(loss, acc):  # higher is better; ties keep the earlier epoch
        return -loss if cfg.monitor == "val_loss" else acc

    best_score, best_epoch, best_state = score(val_loss, val_acc), 0, copy.deepcopy(model.state_dict())
    if cfg.select_from_epoch > 0 and cfg.max_epochs > 0:
        best_score = -math.inf  # epoch 0 is recorded, never kept
    bad = 0
    gen = torch.Generator().manual_seed(cfg.seed)
    epochs = logs.progress(range(1, cfg.max_epochs + 1), desc=desc, unit="epochs", leave=False,
                           disable=cfg.max_epochs == 0 or None)
    for epoch in epochs:
        opt.train()
        total = 0.0
        batches = torch.randperm(n, generator=gen).split(cfg.batch_size)
        for idx in logs.progress(batches, desc=f"epoch {epoch}", unit="batches", leave=False,
                                 disable=not cfg.batch_progress or None):
            loss = F.cross_entropy(model(*(x[idx] for x in train_inputs)), train_labels[idx])
            _check_loss(loss, epoch, lr, cfg.lr_key)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        opt.eval()
        row = dict(epoch=epoch, train_loss=total / n, train_acc=float("nan"), lr=lr)
        if has_val:
            row["val_loss"], row["val_acc"], _ = evaluate(model, val_inputs, val_labels, cfg.eval_batch)
            _check_loss(torch.tensor(row["val_loss"]), epoch, lr, cfg.lr_key)
        else:
            row["val_loss"], row["val_acc"] = float("nan"), float("nan")
        history.append(row)
        epochs.set_postfix(val_acc=row["val_acc"], val_loss=row["val_loss"])
        if on_epoch is not None:
            on_epoch(row)
        if not has_val:
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
            continue
        now = score(row["val_loss"], row["val_acc"])
        if now > best_score:
            best_score, best_epoch, best_state, bad = now, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    for row in history:
        row["best"] = bool(has_val and row["epoch"] == best_epoch)
    return history, lr


def best_score(history: list[dict], monitor: str) -> float:
    """The validation score of the kept epoch (higher is better), for choosing among learning rates."""
    row = next((r for r in history if r.get("best")), history[-1])
    value = -row["val_loss"] if monitor == "val_loss" else row["val_acc"]
    return float(value) if np.isfinite(value) else -np.inf


def train_grid(make_model, lrs, train_inputs, train_labels, val_inputs, val_labels, cfg: TrainConfig, desc="train"):
    """Train a fresh model per learning rate of `lrs`, keep the one with the best validation score.

    Returns (model, history of the kept run, chosen lr, {lr: score}). With one lr this is `train`.
    """
    from dataclasses import replace

    best = None
    scores = {}
    for lr in lrs:
        model = make_model()
        history, used = train(model, train_inputs, train_labels, val_inputs, val_labels, replace(cfg, lr=float(lr)),
                              desc=f"{desc} lr={lr:g}")
        scores[float(lr)] = best_score(history, cfg.monitor)
        if best is None or scores[float(lr)] > best[0]:
            best = (scores[float(lr)], model, history, used)
    return best[1], best[2], best[3], scores
