"""Direct decomposition of HTS-AT's pooled embedding into per-unit contributions.

With the statistics σ of the three patch-merging LayerNorms and of the final LayerNorm
frozen at their values in the forward pass (the linearisation ResiDual uses for the final
norm, carried through the merges), the 768-d `embedding` is exactly

    embedding = Σ_units direct(unit) + const,

units being the patch embedding, every attention head (its post-projection output, with
1/H of the projection bias) and every MLP. Why it is cheap: with σ frozen a merge is

    merge(x)[t'] = (1/σ_t') Σ_{p=0..3} B_p x[t'_p] + W β,
    B_p = W_p diag(γ_p) − (1/4C) (W γ) 1ᵀ        (LayerNorm centring folded in),

and the pooled final norm is (1/T) Σ_t diag(γ_f) P x[t] / σ_t + β_f (P centres). A stage-s
token therefore reaches the embedding through a fixed product of matrices that depends
only on its sub-positions p at each later merge (4^(3−s) "paths"), times a clip-dependent
scalar (the product of 1/σ along the way and 1/(T σ_f)). Each unit's token outputs are
pooled per path with those scalars and the precomputed path matrices applied once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .hooked import HookedHTSAT
from .laion import Architecture


def unit_names(arch: Architecture) -> list[str]:
    """Unit names in storage order: patch embedding, then per block its heads and its MLP."""
    names = ["patch_embed"]
    for s, (depth, heads) in enumerate(zip(arch.depths, arch.heads)):
        for b in range(depth):
            names += [f"layers.{s}.blocks.{b}.attn.head{h}" for h in range(heads)]
            names.append(f"layers.{s}.blocks.{b}.mlp")
    return names


def head_rows(arch: Architecture) -> list[list[int]]:
    """[stage, block, head] of every head, in storage order."""
    return [[s, b, h] for s, (depth, heads) in enumerate(zip(arch.depths, arch.heads))
            for b in range(depth) for h in range(heads)]


def pooled_head_outputs(blk, z_mean: torch.Tensor) -> torch.Tensor:
    """Token-mean per-head output after the projection (bias split 1/H): [B, H, C] from mean z [B, H, d]."""
    proj = blk.attn.proj
    nh, d = z_mean.shape[-2:]
    return torch.einsum("bhd,chd->bhc", z_mean, proj.weight.view(-1, nh, d)) + proj.bias / nh


@dataclass
class _Stage:
    order: torch.Tensor  # [P, K] token indices grouped by path
    maps: torch.Tensor  # [P, E, C] path matrices to the embedding
    parent: torch.Tensor | None  # [T] token index at the next stage
    merge_bias: torch.Tensor | None  # [P_next, E]: path matrix of the next stage times W β of this merge


class DirectDecomposition:
    """Path matrices of one model, and the per-clip decomposition from a forward's hook values."""

    def __init__(self, model, dtype: torch.dtype | None = None):
        self.hooked = model if isinstance(model, HookedHTSAT) else HookedHTSAT(model)
        self.branch = self.hooked.branch
        self.arch = self.hooked.arch
        self.units = unit_names(self.arch)
        dtype = dtype or self.branch.norm.weight.dtype
        self.stages = self._build(dtype)

    @property
    def needed_hooks(self) -> list[str]:
        """Hook points whose values the decomposition needs."""
        names = ["hook_patch_embed", "hook_norm_scale"]
        for s, depth in enumerate(self.arch.depths):
            for b in range(depth):
                names += [f"layers.{s}.blocks.{b}.attn.hook_z", f"layers.{s}.blocks.{b}.hook_mlp_out"]
            if s < len(self.arch.depths) - 1:
                names.append(f"layers.{s}.hook_merge_scale")
        return names

    @torch.no_grad()
    def _build(self, dtype) -> list[_Stage]:
        branch = self.branch
        n = len(branch.layers)
        dev = branch.norm.weight.device
        f64 = torch.float64
        E = branch.norm.weight.shape[0]
        centre = torch.eye(E, dtype=f64, device=dev) - 1.0 / E
        maps = [None] * n
        maps[n - 1] = (branch.norm.weight.to(f64)[:, None] * centre)[None]  # [1, E, E]
        path = [None] * n
        path[n - 1] = torch.zeros(math.prod(branch.layers[n - 1].input_resolution), dtype=torch.long, device=dev)
        parents = [None] * n
        merge_bias = [None] * n
        for s in range(n - 2, -1, -1):
            merge = branch.layers[s].downsample
            H, W = merge.input_resolution
            C = merge.dim
            w = merge.reduction.weight.to(f64)  # [2C, 4C]
            g = merge.norm.weight.to(f64)
            wg = w @ g
            blocks = torch.stack([w[:, p * C:(p + 1) * C] * g[p * C:(p + 1) * C] - wg[:, None] / (4 * C) for p in range(4)])
            nxt = maps[s + 1]  # [Pn, E, 2C]
            # path id = p_s + 4 * (path id at s+1)
            maps[s] = torch.einsum("qec,pcd->qped", nxt, blocks).reshape(-1, E, C)
            merge_bias[s] = torch.einsum("qec,c->qe", nxt, w @ merge.norm.bias.to(f64))
            i = torch.arange(H, device=dev)[:, None].expand(H, W)
            j = torch.arange(W, device=dev)[None, :].expand(H, W)
            sub = (i % 2) + 2 * (j % 2)  # x0=[0::2,0::2], x1=[1::2,0::2], x2=[0::2,1::2], x3=[1::2,1::2]
            parent = ((i // 2) * (W // 2) + j // 2).reshape(-1)
            parents[s] = parent
            path[s] = sub.reshape(-1) + 4 * path[s + 1][parent]
        stages = []
        for s in range(n):
            P = maps[s].shape[0]
            order = torch.argsort(path[s], stable=True).view(P, -1)
            stages.append(_Stage(
                order=order,
                maps=maps[s].to(dtype),
                parent=parents[s],
                merge_bias=None if merge_bias[s] is None else merge_bias[s].to(dtype),
            ))
        return stages

    def token_weights(self, cache: dict) -> list[torch.Tensor]:
        """Clip-dependent scalar of each token's path: 1/(T σ_f) times 1/σ of every later merge."""
        n = len(self.stages)
        sigma_f = cache["hook_norm_scale"]
        weights = [None] * n
        weights[n - 1] = 1.0 / (sigma_f.shape[1] * sigma_f)
        for s in range(n - 2, -1, -1):
            scaled = weights[s + 1] / cache[f"layers.{s}.hook_merge_scale"]
            weights[s] = scaled[:, self.stages[s].parent]
        return weights

    @staticmethod
    def _pool(stage: _Stage, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Σ over the tokens of each path of w_t x[t]: [B, T, ...] -> [B, P, ...]."""
        P, K = stage.order.shape
        idx = stage.order.reshape(-1)
        xs = x[:, idx].reshape(x.shape[0], P, K, -1)
        ws = w[:, idx].reshape(w.shape[0], P, K)
        return torch.einsum("bpk,bpkf->bpf", ws, xs).reshape(x.shape[0], P, *x.shape[2:])

    def contributions(self, cache: dict) -> dict:
        """``units`` [B, U, E] and ``const`` [B, E] from the hook values of one forward."""
        weights = self.token_weights(cache)
        out = []
        for s, stage in enumerate(self.stages):
            w = weights[s]
            if s == 0:
                pooled = self._pool(stage, w, cache["hook_patch_embed"])
                out.append(torch.einsum("bpc,pec->be", pooled, stage.maps)[:, None])
            w_sum = w[:, stage.order].sum(-1)  # [B, P]
            for b, blk in enumerate(self.branch.layers[s].blocks):
                prefix = f"layers.{s}.blocks.{b}"
                z = self._pool(stage, w, cache[f"{prefix}.attn.hook_z"])  # [B, P, H, d]
                proj = blk.attn.proj
                nh, d = z.shape[-2:]
                result = torch.einsum("bphd,chd->bphc", z, proj.weight.view(-1, nh, d))
                result = result + w_sum[:, :, None, None] * (proj.bias / nh)
                out.append(torch.einsum("bphc,pec->bhe", result, stage.maps))
                mlp = self._pool(stage, w, cache[f"{prefix}.hook_mlp_out"])
                out.append(torch.einsum("bpc,pec->be", mlp, stage.maps)[:, None])
        units = torch.cat(out, 1)
        const = self.branch.norm.bias.expand(units.shape[0], -1)
        for s, stage in enumerate(self.stages[:-1]):
            nxt = self.stages[s + 1]
            w_sum = weights[s + 1][:, nxt.order].sum(-1)
            const = const + w_sum @ stage.merge_bias
        return {"units": units, "const": const}

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor, hooks=None) -> dict:
        """One forward: ``embedding``, ``audio_embed``, and the decomposition ``units``, ``const``."""
        out, cache = self.hooked.run_with_cache(mel, names=self.needed_hooks, hooks=hooks)
        return {**out, **self.contributions(cache)}


def relative_error(units: torch.Tensor, const: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """Per-clip ‖Σ units + const − embedding‖ / ‖embedding‖."""
    return (units.sum(1) + const - embedding).norm(dim=-1) / embedding.norm(dim=-1)
