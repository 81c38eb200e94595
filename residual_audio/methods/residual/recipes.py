"""ResiDual recipes as estimators on the stored direct contributions (direct mode).

Each registered method `residual_<recipe>` reads its `Recipe` from
`residual.recipes.<recipe>.*` (defaults: `residual.RECIPES`, the paper's values). Per fold it
fits each reweighted unit's mean μ and PCA basis Φ on the fitting clips (`bases_on: fit`)
or on the unlabelled clips (`bases_on: unlabelled`), never on validation or test clips of
the fold, and trains λ. The embedding it scores is

    e' = const + Σ_{u kept} x_u + Σ_{u reweighted} f_u(x_u)

    f_u(x) = Φᵀ diag(λ) Φ (x − μ) + [beyond: keep] (I − ΦᵀΦ)(x − μ) + [add_mean] μ     (pca)
    f_u(x) = λ_u x                                                                 (coarse: no PCA)

where the reweighted units are the recipe's `units` of the stages in `inject_layers`, and
"kept" units are every other unit when `others: keep`, none when `others: remove`
(zero ablation); with `others: mean` (mean ablation) every other unit enters as its mean over the
clips the bases are fitted on (`UnitStore.unit_means`), the same for every clip. The constant (the final norm's β and the merges' carried biases) is
always kept: it is not a residual unit. The frozen CLAP head then scores e'.
When the recipe is the identity form (add_mean, beyond keep, others keep) e' is computed
as the correction e + Σ Φᵀ diag(λ − 1) Φ (x − μ), so λ = 1 reproduces zero-shot bit for bit.

`reconstruct: released` computes f_u as the released code does (`nn/adapter.py`, `ResiDual`): the
unit's full PCA basis Φ (r rows: D when the fitting clips outnumber the dimensions, else the
spanned ones), coordinates c = (x − μ) Φᵀ, λ on the first k and `beyond`'s padding (keep: 1,
drop: 0) on the rest, mapped back with the rows of `maths.released_back`:

    f_u(x) = (c ⊙ λ̃) Φᵀ   (square basis, r = D)        f_u(x) = (c ⊙ λ̃) Φ   (r < D)   [+ add_mean μ]

so with a square basis λ = 1 does not give x − μ back. With r < D the directions the fitting clips
do not span are dropped whatever `beyond` says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields

import numpy as np
import torch
from torch import nn

from ...core.params import ParamError, get
from ...data.stores import StoreError
from ...data.units import parse_unit
from ...evaluation.zeroshot import FrozenHead
from ..base import Estimator, FoldData, register
from ..baselines import CHUNK, EVAL_BATCH, init_lambda
from ..training import TrainConfig, evaluate, train_grid
from .maths import Recipe, UnitBases, fixed_signs, n_components, released_back, unit_pca

BASES_ON = ("fit", "unlabelled")
OTHERS = ("keep", "remove", "mean")
LAM_INIT = ("ones", "normal")


def read_recipe(params: dict, name: str) -> Recipe:
    """Recipe `name` as `residual.recipes.<name>.*` gives it (the schema holds the defaults and checked every field)."""
    values = {f.name: get(params, f"residual.recipes.{name}.{f.name}") for f in fields(Recipe) if f.name != "name"}
    return Recipe.of(name, values)


def identity_form(r: Recipe) -> bool:
    """λ = 1 leaves every unit as it is: e' is then computed as a correction of the exact embedding."""
    return r.pca and r.add_mean and r.beyond == "keep" and r.others == "keep" and r.reconstruct == "paper"


def cached_pca(data: FoldData, clips: np.ndarray, unit: int):
    """(μ, eigenvalues, Φ with a fixed sign per row) of one unit on `clips`; shared by the recipes of a fold
    through `data.context['pca']` (keyed by the clip set), so each unit is decomposed once per fold."""
    cache = data.context.setdefault("pca", {})
    key = (hashlib.sha1(np.ascontiguousarray(clips, dtype=np.int64).tobytes()).hexdigest(), int(unit))
    if key not in cache:
        mu, ev, phi = unit_pca(data.store.units[clips, unit, :])
        cache[key] = (mu.astype(np.float32), ev, fixed_signs(phi))
    return cache[key]


class RecipeModel(nn.Module):
    """pre = pre_base + Σ (λ − offset) ⊙ g, then the frozen head; only λ is trained.

    With PCA, g is factorised as coef [n, J] times Ψ = Φ W₁ᵀ [J, 512]; without (coarse), g is
    each unit's own x_u W₁ᵀ, [n, U, 512].
    """

    def __init__(self, head: FrozenHead, lam0: np.ndarray, psi: torch.Tensor | None, offset: float):
        super().__init__()
        self.head = head.requires_grad_(False)
        self.lam = nn.Parameter(torch.from_numpy(np.asarray(lam0, np.float32).copy()))
        self.register_buffer("psi", psi if psi is not None else torch.zeros(0))
        self.pca = psi is not None
        self.offset = offset

    def forward(self, pre_base: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        w = self.lam - self.offset
        if self.pca:
            return self.head(pre_base + (g * w) @ self.psi)
        return self.head(pre_base + torch.einsum("nuk,u->nk", g, w))


class ResiDualRecipe(Estimator):
    needs = frozenset({"validation"})  # early stopping and the kept checkpoint (and any lr grid)
    """One ResiDual recipe in direct mode (see the module docstring for the map)."""

    recipe_name = ""
    fixed_bases_on: str | None = None

    def __init__(self, recipe: Recipe, inject_layers=(0, 1, 2, 3), bases_on: str = "fit"):
        self.recipe = recipe
        self.inject_layers = tuple(inject_layers)
        self.bases_on = bases_on

    @classmethod
    def from_params(cls, params):
        from dataclasses import replace

        from ..baselines import tuned_lrs

        recipe = read_recipe(params, cls.recipe_name)
        lrs = tuned_lrs(params, recipe.lr)
        recipe = replace(recipe, lr=lrs if isinstance(recipe.lr, tuple) or len(lrs) > 1 else lrs[0])
        bases_on = cls.fixed_bases_on or get(params, "residual.bases_on")
        return cls(recipe, tuple(sorted(get(params, "inject_layers"))), bases_on)

    # ---------------------------------------------------------------- bases
    def _units(self, store) -> tuple[np.ndarray, np.ndarray]:
        """(reweighted unit indices, unit indices kept unchanged) into the store."""
        chosen = [int(i) for i in store.select(self.recipe.units) if parse_unit(store.unit_names[i])["stage"] in self.inject_layers]
        if not chosen:
            raise ParamError(f"params: 'inject_layers' = {list(self.inject_layers)} selects no unit of "
                             f"'residual.recipes.{self.recipe_name}.units' = {self.recipe.units!r}")
        rest = [i for i in range(len(store.unit_names)) if i not in set(chosen)]
        self.ablated_ = np.array(rest if self.recipe.others == "mean" else [], np.int64)
        return np.array(chosen, np.int64), np.array(rest if self.recipe.others == "keep" else [], np.int64)

    def _fit_bases(self, data: FoldData, chosen: np.ndarray) -> UnitBases:
        clips = np.sort(data.split.train if self.bases_on == "fit" else data.unlabelled_clips())
        if len(clips) < 2:
            raise ParamError(f"params: 'cv.*': a fold leaves {len(clips)} clip(s) to fit the bases of {self.name} on")
        # others: mean, the sum of the ablated units' means over the same clips as the bases
        self.ablated_sum_ = (data.store.unit_means(clips, self.ablated_).sum(0, dtype=np.float64)
                             if len(self.ablated_) else None)
        d = data.store.units.shape[2]
        for u in chosen:
            if not np.isfinite(data.store.units[clips, u, :]).all():
                raise StoreError(f"{data.store.path}: non-finite direct contribution of {data.store.unit_names[u]} "
                                 f"in clips that {self.name} fits its bases on")
        released = self.recipe.pca and self.recipe.reconstruct == "released"
        means, comps, owner, explained, backs = [], [], [], [], []
        self.full_bases_ = []  # released: per unit (Φ [r, D], back rows [r, D], k), the rows past k padded
        for j, u in enumerate(chosen):
            mu, ev, phi = cached_pca(data, clips, u)
            k = n_components(ev, self.recipe.variance) if self.recipe.pca else 0
            means.append(mu)
            comps.append(phi[:k])
            owner.append(np.full(k, j, np.int64))
            explained.append((ev[:k] / max(ev.sum(), 1e-300)).astype(np.float32))
            if released:
                back = released_back(phi, d)
                backs.append(back[:k])
                self.full_bases_.append((phi, back, k))
        return UnitBases([data.store.unit_names[i] for i in chosen], chosen, np.stack(means),
                         np.concatenate(comps) if comps else np.zeros((0, d), np.float32),
                         np.concatenate(owner), np.concatenate(explained), float(self.recipe.variance),
                         back=np.concatenate(backs) if released else None)

    # ---------------------------------------------------------------- features
    def _features(self, data: FoldData, idx: np.ndarray, chunk: int = CHUNK):
        """(pre_base [n, 512], g) for clips `idx`, in float32, chunk by chunk."""
        r, b, head = self.recipe, self.bases_, FrozenHead(data.text)
        store = data.store
        pres, gs = [], []
        for start in range(0, len(idx), chunk):
            sl = np.asarray(idx[start : start + chunk])
            units = store.units[sl]  # [c, U_all, D]
            x = units[:, b.unit_index, :].astype(np.float64)  # reweighted units
            if identity_form(r):
                base = store.embedding[sl].astype(np.float32)
            else:
                base = store.const[sl].astype(np.float64) + units[:, self.kept_, :].sum(1, dtype=np.float64)
                if self.ablated_sum_ is not None:
                    base += self.ablated_sum_[None]
                if r.pca:
                    xc = x - b.means[None].astype(np.float64)
                    if r.reconstruct == "released":
                        if r.beyond == "keep":  # the released padding: λ = 1 on the basis rows past k
                            for u, (phi, back, k) in enumerate(self.full_bases_):
                                base += (xc[:, u] @ phi[k:].T.astype(np.float64)) @ back[k:].astype(np.float64)
                    elif r.beyond == "keep":
                        for u, s in enumerate(b.unit_slices()):
                            phi = b.components[s].astype(np.float64)
                            base += xc[:, u] - (xc[:, u] @ phi.T) @ phi
                    if r.add_mean:
                        base += b.means.sum(0, dtype=np.float64)
                base = base.astype(np.float32)
            with torch.no_grad():
                pres.append(head.pre(torch.from_numpy(base)))
                if r.pca:
                    coef = np.empty((len(sl), len(b.owner)), np.float32)
                    for u, s in enumerate(b.unit_slices()):
                        coef[:, s] = ((x[:, u] - b.means[u]) @ b.components[s].T.astype(np.float64)).astype(np.float32)
                    gs.append(torch.from_numpy(coef))
                else:
                    gs.append(torch.from_numpy(x.astype(np.float32)) @ head.w1.T)
        if not pres:
            return torch.zeros(0, head.w1.shape[0]), torch.zeros((0, len(b.owner)) if r.pca else (0, len(b.unit_index), head.w1.shape[0]))
        return torch.cat(pres), torch.cat(gs)

    # ---------------------------------------------------------------- fit / logits
    def fit(self, data: FoldData) -> "ResiDualRecipe":
        r = self.recipe
        chosen, self.kept_ = self._units(data.store)
        self.bases_ = self._fit_bases(data, chosen)
        head = FrozenHead(data.text)
        n_lam = len(self.bases_.owner) if r.pca else len(chosen)
        self.init_seed_ = int(data.seed)
        self.lam_init_ = init_lambda(n_lam, r.lam_init, self.init_seed_)
        tr, va = data.split.train, data.split.val
        ftr, fva = self._features(data, tr), self._features(data, va)
        cfg = TrainConfig(max_epochs=r.max_epochs, patience=r.patience, batch_size=r.batch_size, monitor=r.select_on,
                          seed=data.seed, lr_key=f"residual.recipes.{self.recipe_name}.lr",
                          warmup_epochs=r.warmup_epochs, select_from_epoch=r.select_from_epoch)
        lrs = r.lr if isinstance(r.lr, tuple) else (float(r.lr),)
        self.model_, self.history_, self.lr_, self.lr_scores_ = train_grid(
            lambda: self._model(head, self.lam_init_), lrs, ftr, data.labels[tr], fva, data.labels[va], cfg,
            desc=self.name)
        self.lam_ = self.model_.lam.detach().numpy().copy()
        self.n_params_ = int(n_lam)
        return self

    def _model(self, head: FrozenHead, lam: np.ndarray) -> RecipeModel:
        """The trainable model over the fitted bases (λ = `lam`): the map back through the head's first layer,
        Ψ = (back rows, or Φ) W₁ᵀ, and the offset of the identity form."""
        b = self.bases_
        psi = torch.from_numpy(b.back if b.back is not None else b.components) @ head.w1.T if self.recipe.pca else None
        return RecipeModel(head, lam, psi, 1.0 if identity_form(self.recipe) else 0.0)

    def logits(self, data: FoldData, idx) -> np.ndarray:
        self._check_fitted()
        _, _, out = evaluate(self.model_, self._features(data, np.asarray(idx)), torch.from_numpy(data.labels[idx]), EVAL_BATCH)
        return out.numpy()

    def chosen(self) -> dict:
        return {"lr": self.lr_, "lr_scores": {f"{k:g}": v for k, v in self.lr_scores_.items()}}

    # ---------------------------------------------------------------- export
    exportable = True

    @classmethod
    def from_hyper(cls, hyper: dict) -> "ResiDualRecipe":
        recipe = dict(hyper["recipe"])
        return cls(Recipe.of(recipe.pop("name"), recipe), tuple(hyper["inject_layers"]), hyper["bases_on"])

    def state(self) -> dict:
        b = self.bases_
        out = {"unit_index": b.unit_index, "kept_index": self.kept_, "mean_index": self.ablated_,
               "mean_sum": self.ablated_sum_ if self.ablated_sum_ is not None else np.zeros(0),
               "means": b.means, "components": b.components, "owner": b.owner, "explained": b.explained,
               "lam": self.model_.lam.detach().numpy().copy(), "n_params": np.int64(self.n_params_)}
        if b.back is not None:
            out["back"] = b.back
        if self.recipe.beyond == "keep":  # the released padding's rows past k enter the logits only then
            for u, (phi, back, k) in enumerate(getattr(self, "full_bases_", [])):
                out[f"full.{u}.phi"], out[f"full.{u}.back"], out[f"full.{u}.k"] = phi, back, np.int64(k)
        return out

    def restore(self, state: dict, text) -> "ResiDualRecipe":
        r = self.recipe
        self.kept_, self.ablated_ = state["kept_index"].astype(np.int64), state["mean_index"].astype(np.int64)
        self.ablated_sum_ = state["mean_sum"].astype(np.float64) if len(state["mean_sum"]) else None
        n_units = len(state["unit_index"])
        self.full_bases_ = [(state[f"full.{u}.phi"], state[f"full.{u}.back"], int(state[f"full.{u}.k"]))
                            for u in range(n_units) if f"full.{u}.phi" in state]
        self.bases_ = UnitBases([], state["unit_index"].astype(np.int64), state["means"].astype(np.float32),
                                state["components"].astype(np.float32), state["owner"].astype(np.int64),
                                state["explained"].astype(np.float32), float(r.variance),
                                back=state["back"].astype(np.float32) if "back" in state else None)
        self.model_ = self._model(FrozenHead(text), state["lam"].astype(np.float32)).eval()
        self.lam_ = state["lam"].astype(np.float32)
        self.n_params_, self.history_ = int(state["n_params"]), []
        return self

    def artefacts(self) -> dict:
        b = self.bases_
        return {
            "unit_names": np.array(b.unit_names), "unit_index": b.unit_index, "kept_index": self.kept_,
            "mean_index": self.ablated_,
            "mean_sum": (self.ablated_sum_ if self.ablated_sum_ is not None else np.zeros(0)).astype(np.float32),
            "means": b.means, "components": b.components, "owner": b.owner, "explained": b.explained,
            "lam": self.lam_, "lam_init": self.lam_init_, "init_seed": np.int64(self.init_seed_),
            "recipe": np.array(json.dumps(asdict(self.recipe))), "bases_on": np.array(self.bases_on),
            "inject_layers": np.array(self.inject_layers, np.int64),
            **({"back": b.back, "square": np.array([len(phi) == b.components.shape[1] for phi, _, _ in self.full_bases_])}
               if b.back is not None else {}),
        }


REGISTRY_RECIPES: dict[str, type[ResiDualRecipe]] = {}  # recipe name → its method class (bases on the fitting clips)


def _recipe_method(recipe: str, method: str | None = None, bases_on: str | None = None):
    cls = type(f"ResiDual_{method or recipe}", (ResiDualRecipe,),
               {"name": method or f"residual_{recipe}", "recipe_name": recipe, "fixed_bases_on": bases_on,
                "__doc__": f"ResiDual, recipe '{recipe}'" + (f", bases on the {bases_on} clips" if bases_on else "")})
    return register(cls)


for _r in ("coarse", "fine", "full", "identity"):
    REGISTRY_RECIPES[_r] = _recipe_method(_r)
# fine's bases fitted on unlabelled clips (every training-side clip), for few-shot runs
_recipe_method("fine", "residual_fine_unlabelled", "unlabelled")
