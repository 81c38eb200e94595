"""ResiDual inside HTS-AT's forward pass: the `residual_inject` method.

Two granularities (`residual.granularity`), both applied token by token inside the hooked
forward of the stages in `inject_layers`, everything downstream recomputed:

- `head`: every attention head's output before the output projection
  (`layers.{s}.blocks.{b}.attn.hook_z`, [B, T, H, 24]), one basis and one λ per head and block.
- `stage`: the attention output after the output projection (`layers.{s}.blocks.{b}.hook_attn_out`,
  [B, T, C_s], the stage's width 96/192/384/768), one basis and one λ vector per stage,
  fitted on every token of every block of the stage and shared by all its blocks (the
  earlier audio study's system).

For a unit with token mean μ and kept PCA components Φ (rows), a token x becomes

    x' = [μ] + Φᵀ diag(λ) Φ (x − μ) + [(I − ΦᵀΦ)(x − μ)]

with μ added back when the recipe says so (`add_mean`) and the components past the
explained-variance threshold kept unchanged (`beyond: keep`) or dropped (`drop`). It is
computed as the correction x' = x − [μ] + (x − μ) A with A = Φᵀ diag(λ − 1) Φ (keep) or
Φᵀ diag(λ) Φ − I (drop), so λ = 1 with `keep` and μ added back (the `identity` recipe) gives
A = 0 and leaves every number untouched: the untrained model is the zero-shot model.
Recipes without PCA (`coarse`) scale each unit's uncentred output by one λ (x' = λ x).

μ and Φ are fitted on the *tokens* of the fold's fitting clips (not on clip means), since
the map is applied per token: one no-grad forward over those clips, from the first to the
last injected stage, accumulates each unit's token sums and second moments in float64.

Only λ is trained; the encoder is held by reference (never registered, copied or put in
training mode: BatchNorm statistics stay frozen, no SpecAugment). Stages before the first
injected one do not depend on λ, so the stream entering it is computed once per clip
(no grad, shared by the folds) and training starts from there; for stage 0 the input is the
log-mel itself (the patch embedding is cheap). Memory for that cache, float32 per clip: stage 0
the log-mel, 256 KB; stage 1 [1024, 192], 768 KB; stage 2 [256, 384], 384 KB; stage 3
[64, 768], 192 KB (HTSAT-tiny). Every pass runs in micro-batches of `residual.inject.micro_batch`
clips, gradients accumulated over the recipe's batch, so peak memory does not depend on the
batch size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core import logs
from ...core.params import ParamError
from ...data.heads import PRE, HeadsStore
from ...data.stores import StoreError
from ...data.units import parse_unit
from ...evaluation.zeroshot import FrozenHead
from ..base import Estimator, FoldData, register
from .maths import UnitBases, kept_components

# --------------------------------------------------------------------------- heads store

@dataclass
class HeadOutputs:
    """What inject mode needs from an extraction store: pooled per-head outputs before the projection."""

    path: Path
    pre: np.ndarray  # [N, heads, 24] token-mean head outputs before the output projection
    label: np.ndarray
    fold: np.ndarray
    clip_id: np.ndarray
    head_names: list[str]  # layers.{s}.blocks.{b}.attn.head{h}, in storage order
    classes: list[str]
    weights: str
    variant: str
    mel_sha256: str

    @property
    def n(self) -> int:
        return len(self.label)


def head_name(stage: int, block: int, head: int) -> str:
    return f"layers.{stage}.blocks.{block}.attn.head{head}"


def read_head_outputs(path: str | Path) -> HeadOutputs:
    """`heads/pre` and the clip table of a heads store (read through `data.heads.HeadsStore`)."""
    store = HeadsStore.open(path, need=("clip_id",))
    if not store.has(PRE):
        raise StoreError(f"{store.path}: missing array '{PRE}' (inject mode and ablation.total need 'pre' in extract.regimes)")
    return HeadOutputs(
        path=store.path, pre=store.read(PRE), label=store.label, fold=store.fold, clip_id=store.clip_id,
        head_names=[head_name(*(int(v) for v in r)) for r in store.rows], classes=store.classes,
        weights=store.weights, variant=store.variant, mel_sha256=str(store.attrs.get("mel_sha256", "")),
    )


def restrict(bases: UnitBases, stages) -> UnitBases:
    """The bases of the heads in `stages` only (units and components in the same order)."""
    keep = [u for u, name in enumerate(bases.unit_names) if parse_unit(name)["kind"] == "head" and parse_unit(name)["stage"] in set(stages)]
    slices = bases.unit_slices()
    rows = np.concatenate([np.arange(slices[u].start, slices[u].stop) for u in keep]) if keep else np.zeros(0, np.int64)
    new_owner = np.concatenate([np.full(slices[u].stop - slices[u].start, i) for i, u in enumerate(keep)]) if keep else rows
    return dataclasses.replace(
        bases, unit_names=[bases.unit_names[u] for u in keep], unit_index=bases.unit_index[keep],
        means=bases.means[keep], components=bases.components[rows], owner=new_owner.astype(np.int64),
        explained=bases.explained[rows],
    )


# --------------------------------------------------------------------------- units and bases

GRANULARITIES = ("head", "stage")


def stage_unit(stage: int) -> str:
    """The unit name of a stage's attention output (granularity `stage`)."""
    return f"layers.{stage}.attn_out"


def unit_names(arch, stages, granularity: str) -> list[str]:
    """The reweighted units of `stages`, in forward order."""
    if granularity == "stage":
        return [stage_unit(s) for s in sorted(stages)]
    return [head_name(s, b, h) for s in sorted(stages) for b in range(arch.depths[s]) for h in range(arch.heads[s])]


def hook_sites(arch, stages, granularity: str) -> list[tuple[str, slice]]:
    """(hook name, slice of units it carries) per block of `stages`; a stage's blocks share its unit."""
    out, u = [], 0
    for s in sorted(stages):
        for b in range(arch.depths[s]):
            if granularity == "stage":
                out.append((f"layers.{s}.blocks.{b}.hook_attn_out", slice(u, u + 1)))
            else:
                out.append((f"layers.{s}.blocks.{b}.attn.hook_z", slice(u, u + arch.heads[s])))
                u += arch.heads[s]
        u += granularity == "stage"
    return out


def _as_units(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, d] as is; a stage's attention output [B, T, C] as one unit [B, T, 1, C]."""
    return x if x.dim() == 4 else x[:, :, None]


class TokenMoments:
    """Running per-unit token count, sum and sum of outer products (float64), fed by read-only hooks."""

    def __init__(self, n_units: int, dim: int, device):
        self.count = torch.zeros(n_units, dtype=torch.float64, device=device)
        self.sum = torch.zeros(n_units, dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(n_units, dim, dim, dtype=torch.float64, device=device)

    def hook(self, units: slice):
        def add(x, _name):
            x = _as_units(x).double()
            self.count[units] += x.shape[0] * x.shape[1]
            self.sum[units] += x.sum((0, 1))
            self.outer[units] += torch.einsum("btud,btue->ude", x, x)
        return add

    def bases(self, names: list[str], threshold: float) -> UnitBases:
        """Per unit: the token mean and the PCA components reaching `threshold` of explained variance
        (eigenvectors of the token covariance, descending; signs fixed as in `residual.fit_bases`)."""
        count, total, outer = self.count.cpu().numpy(), self.sum.cpu().numpy(), self.outer.cpu().numpy()
        means, comps, owner, explained = [], [], [], []
        for u in range(len(names)):
            n = count[u]
            if n < 2:
                raise ParamError(f"params: 'cv.scheme': a fold leaves {int(n)} token(s) to fit the bases of {names[u]}")
            mu = total[u] / n
            cov = (outer[u] - n * np.outer(mu, mu)) / (n - 1)
            ev, vecs = np.linalg.eigh((cov + cov.T) / 2)
            phi, ratios = kept_components(ev[::-1].clip(0), np.ascontiguousarray(vecs[:, ::-1].T), threshold)
            comps.append(phi)
            owner.append(np.full(len(phi), u, dtype=np.int64))
            explained.append(ratios)
            means.append(mu.astype(np.float32))
        return UnitBases(unit_names=list(names), unit_index=np.arange(len(names)), means=np.stack(means),
                         components=np.concatenate(comps), owner=np.concatenate(owner),
                         explained=np.concatenate(explained), threshold=float(threshold))


@torch.no_grad()
def fit_token_bases(hooked, entry: torch.Tensor, clips: np.ndarray, stages, granularity: str, threshold: float,
                    micro_batch: int, device) -> UnitBases:
    """μ and PCA of every unit's tokens over `clips` (the fold's fitting clips): one no-grad forward
    from the first to the last injected stage, `entry` being what training starts from."""
    if not 0 < threshold <= 1:
        raise ParamError(f"params: 'residual.recipes.*.variance' must be in (0, 1], got {threshold!r}")
    arch, stages = hooked.arch, sorted(stages)
    names = unit_names(arch, stages, granularity)
    sites = hook_sites(arch, stages, granularity)
    dims = {arch_dim(arch, s, granularity) for s in stages}
    if granularity == "stage":
        moments = [TokenMoments(1, arch_dim(arch, s, granularity), device) for s in stages]
        hooks = [(name, moments[stages.index(int(name.split(".")[1]))].hook(slice(0, 1))) for name, _ in sites]
    else:
        (dim,) = dims
        moments = [TokenMoments(len(names), dim, device)]
        hooks = [(name, moments[0].hook(sl)) for name, sl in sites]
    clips = np.asarray(clips)
    for i in logs.progress(range(0, len(clips), micro_batch), desc="token bases", unit="batches", leave=False):
        x = entry[torch.as_tensor(clips[i:i + micro_batch])].to(device)
        hooked.run_stages(x, stages[0], stages[-1] + 1, hooks=hooks)
    if granularity == "stage":
        parts = [m.bases([n], threshold) for m, n in zip(moments, names)]
        return _concat_bases(parts)
    return moments[0].bases(names, threshold)


def arch_dim(arch, stage: int, granularity: str) -> int:
    """Width of one unit: the head dimension (24) or the stage's width."""
    return arch.head_dim if granularity == "head" else arch.widths[stage]


def _concat_bases(parts: list[UnitBases]) -> UnitBases:
    """Units of different widths side by side: means and components zero-padded to the widest."""
    d = max(p.means.shape[1] for p in parts)
    pad = lambda a: np.pad(a, ((0, 0), (0, d - a.shape[1])))  # noqa: E731
    return UnitBases(
        unit_names=[n for p in parts for n in p.unit_names], unit_index=np.arange(len(parts)),
        means=np.concatenate([pad(p.means) for p in parts]),
        components=np.concatenate([pad(p.components) for p in parts]),
        owner=np.concatenate([p.owner + i for i, p in enumerate(parts)]),
        explained=np.concatenate([p.explained for p in parts]), threshold=parts[0].threshold,
    )


def unit_widths(arch, stages, granularity: str) -> list[int]:
    return [arch_dim(arch, s, granularity) for s in sorted(stages)
            for _ in (range(1) if granularity == "stage" else range(arch.depths[s] * arch.heads[s]))]


def coarse_bases(arch, stages, granularity: str) -> UnitBases:
    """No PCA (recipe `pca: false`): each unit's identity basis, μ = 0, so x' = x + x(λ − 1)I = λx."""
    widths = unit_widths(arch, stages, granularity)
    d = max(widths)
    eye = [np.eye(w, d, dtype=np.float32) for w in widths]
    return UnitBases(unit_names=unit_names(arch, stages, granularity), unit_index=np.arange(len(widths)),
                     means=np.zeros((len(widths), d), np.float32), components=np.concatenate(eye),
                     owner=np.repeat(np.arange(len(widths)), widths), explained=np.full(sum(widths), np.nan, np.float32),
                     threshold=1.0)


# --------------------------------------------------------------------------- the model


def _reweight(x: torch.Tensor, name: str, maps: torch.Tensor, means: torch.Tensor, add_mean: bool) -> torch.Tensor:
    """x − [μ] + (x − μ) A for every unit and token: x [B, T, U, d] (or one unit [B, T, d]), A [U, d, d], μ [U, d]."""
    units = _as_units(x)
    d = units.shape[-1]
    means, maps = means[:, :d], maps[:, :d, :d]  # a stage narrower than the widest one: drop the padding
    out = units + torch.einsum("btud,ude->btue", units - means, maps)
    if not add_mean:
        out = out - means
    return out if x.dim() == 4 else out[:, :, 0]


class InjectResiDual(nn.Module):
    """ResiDual on the units of the chosen stages inside the hooked forward, then the frozen zero-shot head.

    `forward(x)`: x is the log-mel [B, 1001, 64] when the first injected stage is 0, else the
    stream entering it (see `entry_inputs`). Only `lam` is trainable: one entry per kept
    component, or per unit when `pca` is False.
    """

    def __init__(self, hooked, head: FrozenHead, bases: UnitBases, stages, beyond: str = "keep", *,
                 granularity: str = "head", add_mean: bool = True, pca: bool = True, lam: torch.Tensor | None = None):
        super().__init__()
        stages = sorted(set(stages))
        hooked.model.requires_grad_(False)
        self.hooked = hooked  # not an nn.Module: the encoder is held by reference, never copied or trained
        self.start, self.stages, self.beyond = stages[0], stages, beyond
        self.granularity, self.add_mean, self.pca = granularity, bool(add_mean), bool(pca)
        self.head = head.requires_grad_(False)
        if granularity == "head":
            bases = restrict(bases, stages)  # a heads-store fit covers every stage
        self.bases = bases
        expected = unit_names(hooked.arch, stages, granularity)
        if bases.unit_names != expected:
            missing = sorted(set(expected) - set(bases.unit_names))[:3]
            raise ParamError(f"params: 'inject_layers': the bases hold the units of stages {stages} only in part, or out of "
                             f"storage order (e.g. {missing}); fit them on the same inject_layers")
        self.sites = hook_sites(hooked.arch, stages, granularity)
        comps = torch.from_numpy(bases.components)
        n_units, d = bases.means.shape
        rank = np.concatenate([np.arange(c) for c in bases.counts]) if len(bases.owner) else np.zeros(0, np.int64)
        pos = torch.from_numpy(bases.owner * d + rank)
        padded = torch.zeros(n_units * d, d).index_copy(0, pos, comps).view(n_units, d, d)
        n_lam = n_units if not self.pca else len(bases.owner)
        lam = torch.ones(n_lam) if lam is None else torch.as_tensor(lam, dtype=torch.float32).clone()
        if lam.shape != (n_lam,):
            raise ValueError(f"λ must have {n_lam} entries, got {tuple(lam.shape)}")
        self.lam = nn.Parameter(lam)
        self.register_buffer("padded", padded)  # [U, d, d]: unit u's kept components in its first rows
        self.register_buffer("pos", pos)  # [J]: where component j sits in `padded`
        self.register_buffer("owner", torch.from_numpy(bases.owner))
        self.register_buffer("means", torch.from_numpy(bases.means))
        self.register_buffer("eye", torch.eye(d))

    @property
    def blocks(self) -> list[tuple[str, slice]]:
        return self.sites

    def component_lam(self) -> torch.Tensor:
        """λ of every kept component [J] (a unit's λ repeated over its components without PCA)."""
        return self.lam[self.owner] if not self.pca else self.lam

    def maps(self) -> torch.Tensor:
        """A per unit [U, d, d]: Φᵀ diag(λ − 1) Φ (keep) or Φᵀ diag(λ) Φ − I (drop)."""
        lam = self.component_lam()
        weight = lam - 1 if self.beyond == "keep" else lam
        n_units, d = self.means.shape
        w = torch.zeros(n_units * d, dtype=weight.dtype, device=weight.device).index_copy(0, self.pos, weight)
        maps = torch.einsum("ukd,uk,uke->ude", self.padded, w.view(n_units, d), self.padded)
        return maps - self.eye if self.beyond == "drop" else maps

    def hooks(self) -> list:
        maps = self.maps()
        add_mean = self.add_mean or not self.pca
        return [(name, partial(_reweight, maps=maps[sl], means=self.means[sl], add_mean=add_mean))
                for name, sl in self.sites]

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The 768-d pooled embedding with ResiDual applied."""
        x = x.to(self.lam.device, non_blocking=True)
        if self.start == 0:
            return self.hooked(x, hooks=self.hooks())["embedding"]
        return self.hooked(start_stage=self.start, resid=x, hooks=self.hooks())["embedding"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.head.pre(self.embedding(x)))
        return logits.to(x.device)


class FromCache(nn.Module):
    """Feeds `model` the cached inputs of the given clip indices, so folds share one cache (no copies)."""

    def __init__(self, model: nn.Module, cache: torch.Tensor):
        super().__init__()
        self.model = model
        self.cache = cache  # plain attribute: not part of the state dict

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(self.cache[clips])


@torch.no_grad()
def entry_inputs(hooked, mel, stage: int, batch_size: int, device) -> torch.Tensor:
    """What training starts from, for every clip, on the CPU: the log-mel (stage 0) or the
    stream entering `stage` (computed once here, without gradients)."""
    n = mel.shape[0]
    if stage == 0:
        return torch.from_numpy(np.ascontiguousarray(mel[:], dtype=np.float32))
    out = None
    for start in logs.progress(range(0, n, batch_size), desc=f"stream into stage {stage}", unit="batches", leave=False):
        chunk = torch.from_numpy(np.asarray(mel[start:start + batch_size], dtype=np.float32)).to(device)
        stream = hooked.stream_into(stage, chunk).float().cpu()
        if out is None:
            out = torch.empty((n, *stream.shape[1:]), dtype=torch.float32)
        out[start:start + len(stream)] = stream
    return out


# --------------------------------------------------------------------------- training


SELECT_ON = ("val_accuracy", "val_loss")
LAM_INIT = ("ones", "normal")


def init_lambda(n: int, how: str, seed: int) -> torch.Tensor:
    """λ at the start: 1, or 1 + N(0, 1) from a seeded generator (the paper's ResiDual)."""
    if how == "ones":
        return torch.ones(n)
    return 1 + torch.randn(n, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def predict(model: nn.Module, entry: torch.Tensor, idx: np.ndarray, micro_batch: int) -> torch.Tensor:
    """Logits [n, C] on the CPU for clips `idx` of the entry cache, `micro_batch` clips per forward."""
    idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    parts = [model(entry[idx[i:i + micro_batch]]).float().cpu() for i in range(0, len(idx), micro_batch)]
    return torch.cat(parts) if parts else torch.zeros(0, model.head.classes.shape[0])


def _score(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def train_lambda(model: InjectResiDual, entry: torch.Tensor, labels: np.ndarray, train_idx: np.ndarray,
                 val_idx: np.ndarray, recipe, micro_batch: int, seed: int = 0, lr_key: str = "lr") -> list[dict]:
    """Schedule-free AdamW on λ: batches of `recipe.batch_size` clips, each run as micro-batches of
    `micro_batch` clips whose gradients are accumulated (same gradient, bounded memory); early
    stopping on `recipe.select_on` (patience `recipe.patience`) keeping the best-validation λ.
    Epoch 0 is the untrained model, so `max_epochs: 0` returns it exactly; it is kept only when
    `recipe.select_from_epoch` is 0 (as the direct-mode loop)."""
    from schedulefree import AdamWScheduleFree

    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
    n = len(train_idx)
    steps = max(1, -(-n // recipe.batch_size))
    opt = AdamWScheduleFree([model.lam], lr=recipe.lr, weight_decay=0.0, warmup_steps=steps)
    model.eval()

    def validate(row: dict) -> float:
        if len(val_idx):
            row["val_loss"], row["val_acc"] = _score(predict(model, entry, val_idx, micro_batch), y[val_idx])
        else:
            row["val_loss"], row["val_acc"] = float("nan"), float("nan")
        return -row["val_acc"] if recipe.select_on == "val_accuracy" else row["val_loss"]

    opt.eval()
    row = dict(epoch=0, train_loss=float("nan"), lr=recipe.lr)
    best_score, best_lam, best_epoch, bad = validate(row), model.lam.detach().clone(), 0, 0
    if recipe.select_from_epoch > 0 and recipe.max_epochs > 0:
        best_score = math.inf  # epoch 0 is recorded, never kept
    history = [row]
    gen = torch.Generator().manual_seed(int(seed))
    epochs = logs.progress(range(1, recipe.max_epochs + 1), desc="residual_inject", unit="epochs", leave=False,
                           disable=recipe.max_epochs == 0 or None)
    for epoch in epochs:
        opt.train()
        total = 0.0
        for batch in torch.from_numpy(train_idx)[torch.randperm(n, generator=gen)].split(recipe.batch_size):
            opt.zero_grad(set_to_none=True)
            for micro in batch.split(micro_batch):
                loss = F.cross_entropy(model(entry[micro]), y[micro], reduction="sum") / len(batch)
                loss.backward()
                total += float(loss) * len(batch)
            if not np.isfinite(total):
                raise ParamError(f"params: '{lr_key}' = {recipe.lr}: the training loss became {total} at epoch {epoch}; "
                                 "lower the learning rate (nothing was written)")
            opt.step()
        opt.eval()
        row = dict(epoch=epoch, train_loss=total / n, lr=recipe.lr)
        score = validate(row)
        history.append(row)
        epochs.set_postfix({k: v for k, v in row.items() if k.startswith("val_")})
        if not len(val_idx) or score < best_score:
            best_score, best_lam, best_epoch, bad = score, model.lam.detach().clone(), epoch, 0
        else:
            bad += 1
            if bad >= recipe.patience:
                break
    with torch.no_grad():
        model.lam.copy_(best_lam)
    for r in history:
        r["best"] = r["epoch"] == best_epoch
    return history


# --------------------------------------------------------------------------- the estimator


ENTRY_KEY = "residual_inject/entry/{stage}"  # data.context key of the entry cache (shared by folds)


@register
class ResidualInject(Estimator):
    """ResiDual inside the forward pass (`residual.granularity`: `head` | `stage`) with a recipe's
    λ-init, μ and `beyond` rules and training settings; bases fitted per fold on the tokens of
    the fitting clips. `units` and `others` of a recipe do not apply here: the forward itself
    carries every other unit unchanged."""

    name = "residual_inject"
    needs = frozenset({"encoder", "validation"})

    def __init__(self, recipe=None, granularity: str = "head", stages=(0,), device: str = "auto", micro_batch: int = 8):
        from .maths import RECIPES

        self.recipe = RECIPES["identity"] if recipe is None else recipe
        self.granularity = granularity
        self.stages = stages
        self.device = device
        self.micro_batch = micro_batch

    @classmethod
    def from_params(cls, params: dict) -> "ResidualInject":
        from ...core.params import get
        from .recipes import read_recipe

        name = get(params, "residual.inject.recipe")
        recipe = read_recipe(params, name)
        if recipe.reconstruct != "paper":
            raise ParamError(f"params: 'residual.recipes.{name}.reconstruct' = {recipe.reconstruct!r}: residual_inject "
                             "computes the paper's equation only; use 'paper', or the recipe in direct mode "
                             f"(residual_{name})")
        return cls(recipe=recipe,
                   granularity=get(params, "residual.granularity"), stages=sorted(get(params, "inject_layers")),
                   device=get(params, "train.device"), micro_batch=get(params, "residual.inject.micro_batch"))

    def _entry(self, data: FoldData) -> torch.Tensor:
        """The stream entering the first injected stage for every clip, built once per dataset."""
        ctx, start = data.context, min(self.stages)
        key = ENTRY_KEY.format(stage=start)
        if key not in ctx:
            ctx[key] = entry_inputs(ctx["hooked"], ctx["mel"], start, self.micro_batch, ctx["device"])
        return ctx[key]

    def _model(self, data: FoldData, bases: UnitBases, lam: torch.Tensor) -> InjectResiDual:
        r = self.recipe
        return InjectResiDual(data.context["hooked"], FrozenHead(data.text), bases, self.stages, r.beyond,
                              granularity=self.granularity, add_mean=r.add_mean, pca=r.pca, lam=lam).to(data.context["device"])

    def fit(self, data: FoldData) -> "ResidualInject":
        hooked, device = data.context["hooked"], data.context["device"]
        entry = self._entry(data)
        if self.recipe.pca:
            bases = fit_token_bases(hooked, entry, data.split.train, self.stages, self.granularity,
                                    self.recipe.variance, self.micro_batch, device)
        else:
            bases = coarse_bases(hooked.arch, self.stages, self.granularity)
        n_lam = len(bases.owner) if self.recipe.pca else len(bases.unit_names)
        self.init_seed_ = int(data.seed)
        self.lam_init_ = init_lambda(n_lam, self.recipe.lam_init, self.init_seed_)
        # a learning-rate grid is searched like the direct-mode recipes: one run per lr, best validation kept
        lrs = self.recipe.lr if isinstance(self.recipe.lr, tuple) else (float(self.recipe.lr),)
        best = None
        for lr in lrs:
            model = self._model(data, bases, self.lam_init_)
            history = train_lambda(model, entry, data.labels, data.split.train, data.split.val,
                                   dataclasses.replace(self.recipe, lr=float(lr)), self.micro_batch, data.seed,
                                   lr_key=f"residual.recipes.{self.recipe.name}.lr")
            kept = next(r for r in history if r["best"])
            score = kept["val_acc"] if self.recipe.select_on == "val_accuracy" else -kept["val_loss"]
            score = score if np.isfinite(score) else -np.inf
            if best is None or score > best[0]:
                best = (score, model, history, float(lr))
        _, model, self.history_, self.lr_ = best
        self.bases_, self.model_ = bases, model
        self.lam_ = model.lam.detach().cpu().numpy().copy()
        self.n_params_ = int(model.lam.numel())
        return self

    def logits(self, data: FoldData, idx: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return predict(self.model_, self._entry(data), idx, self.micro_batch).numpy()

    def artefacts(self) -> dict[str, np.ndarray]:
        """Unit names, μ [U, d], Φ kept rows [J, d] with their owner unit, λ (trained and initial),
        the recipe's fields, the init seed, the granularity and the stages."""
        self._check_fitted()
        b, r = self.bases_, self.recipe
        out = {
            "unit_names": np.array(b.unit_names), "means": b.means, "components": b.components, "owner": b.owner,
            "explained": b.explained, "lam": self.lam_, "lam_init": self.lam_init_.numpy(),
            "init_seed": np.int64(self.init_seed_), "granularity": np.array(self.granularity),
            "stages": np.asarray(self.stages, dtype=np.int64),
            "widths": np.asarray(unit_widths(self.model_.hooked.arch, self.stages, self.granularity), dtype=np.int64),
        }
        for f in dataclasses.fields(r):
            out[f"recipe.{f.name}"] = np.array(getattr(r, f.name))
        return out
