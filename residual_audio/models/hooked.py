"""HTS-AT's audio forward, re-implemented on LAION's own weights, with hook points.

LAION's forward hides the quantities an interpretability study needs: the per-head
outputs exist only inside shifted windows and are mixed by the output projection at
once. Here the same computation is laid out so that every head's output (`attn.hook_z`,
before the output projection) and its contribution to the residual stream
(`attn.hook_result`, after it) can be read, or replaced, in spectrogram (image) token
order, TransformerLens-style.

Hook points (any subset can be used, each on its own):

========================================  ===========================  =========================
name                                      shape                        meaning
========================================  ===========================  =========================
``hook_patch_embed``                      [B, T0, C0]                  stream after patch_embed (+ its norm)
``layers.{s}.blocks.{b}.hook_resid_pre``  [B, Ts, Cs]                  stream entering the block
``layers.{s}.blocks.{b}.attn.hook_z``     [B, Ts, Hs, d]               per-head output before projection
``layers.{s}.blocks.{b}.attn.hook_result``  [B, Ts, Hs, Cs]            per-head output after projection
                                                                       (projection bias split 1/Hs per head)
``layers.{s}.blocks.{b}.hook_attn_out``   [B, Ts, Cs]                  attention output added to the stream
``layers.{s}.blocks.{b}.hook_mlp_out``    [B, Ts, Cs]                  MLP output added to the stream
``layers.{s}.blocks.{b}.hook_resid_post`` [B, Ts, Cs]                  stream leaving the block
``layers.{s}.hook_merge_scale``           [B, Ts+1]                    σ of the patch-merging LayerNorm
``layers.{s}.hook_merge_out``             [B, Ts+1, Cs+1]              patch-merging output (stream entering s+1)
``hook_norm_in``                          [B, T3, C3]                  input of the final LayerNorm
``hook_norm_scale``                       [B, T3]                      σ of the final LayerNorm
``hook_embedding``                        [B, C3]                      mean over tokens of the final-norm output
========================================  ===========================  =========================

A hook is ``fn(tensor, name)``; when it returns a tensor, that tensor replaces the value
and everything downstream is recomputed from it (return a new tensor rather than editing
the given one in place: ``attn.hook_result`` is only summed back when it is replaced). Replacing a ``*_scale`` hook freezes
that LayerNorm's statistics. Tokens are in row-major image order (the order LAION's
stream uses between blocks), after undoing window partition and cyclic shift.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from .laion import Architecture

Hook = Callable[[torch.Tensor, str], "torch.Tensor | None"]

BLOCK_HOOKS = (
    "hook_resid_pre",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_resid_post",
)


def hook_names(arch: Architecture) -> list[str]:
    """Every hook point of a model with this architecture, in forward order."""
    names = ["hook_patch_embed"]
    for s, depth in enumerate(arch.depths):
        for b in range(depth):
            names += [f"layers.{s}.blocks.{b}.{h}" for h in BLOCK_HOOKS]
        if s < len(arch.depths) - 1:
            names += [f"layers.{s}.hook_merge_scale", f"layers.{s}.hook_merge_out"]
    return names + ["hook_norm_in", "hook_norm_scale", "hook_embedding"]


def _layer_norm_parts(x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred input and σ = sqrt(var + eps) of a LayerNorm, so σ can be read or frozen."""
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1) + norm.eps).sqrt()
    return centred, scale


class HookedHTSAT:
    """LAION-CLAP's HTS-AT audio encoder (from a cached log-mel) with hook points.

    Holds no weights of its own: every parameter is read from `model` (LAION's ``CLAP``),
    so the hooked forward always computes with exactly the model's current weights.
    """

    def __init__(self, model):
        if model.training:
            raise RuntimeError("the frozen model must stay in eval() mode")
        self.model = model
        self.branch = model.audio_branch
        self.arch = Architecture.of(model)
        self.names = hook_names(self.arch)
        self._known = set(self.names)

    # ------------------------------------------------------------------ hooks

    def _normalise_hooks(self, hooks) -> dict[str, list[Hook]]:
        table: dict[str, list[Hook]] = defaultdict(list)
        if hooks is None:
            return table
        items = hooks.items() if isinstance(hooks, Mapping) else hooks
        for name, fn in items:
            if name not in self._known:
                raise KeyError(f"unknown hook point '{name}' (see HookedHTSAT.names)")
            fns = fn if isinstance(fn, (list, tuple)) else [fn]
            table[name].extend(fns)
        return table

    @staticmethod
    def _run(table, name: str, value: torch.Tensor) -> torch.Tensor:
        for fn in table.get(name, ()):
            out = fn(value, name)
            if out is not None:
                if out.shape != value.shape:
                    raise ValueError(f"hook on '{name}' returned shape {tuple(out.shape)}, expected {tuple(value.shape)}")
                value = out
        return value

    # ------------------------------------------------------------------ pieces

    def mel_to_image(self, mel: torch.Tensor) -> torch.Tensor:
        """bn0 and LAION's reshape of the [B, 1001, 64] log-mel into a [B, 1, 256, 256] image."""
        x = mel[:, None]
        x = self.branch.bn0(x.transpose(1, 3)).transpose(1, 3)
        return self.branch.reshape_wav2img(x)

    def patch_embed(self, mel: torch.Tensor) -> torch.Tensor:
        return self.branch.patch_embed(self.mel_to_image(mel))

    def _attention_z(self, blk, x: torch.Tensor) -> torch.Tensor:
        """Per-head attention output of a Swin block in image order: [B, T, H, d]."""
        attn = blk.attn
        H, W = blk.input_resolution
        B, T, C = x.shape
        ws, shift, nh = blk.window_size, blk.shift_size, attn.num_heads
        d = C // nh
        h = blk.norm1(x).view(B, H, W, C)
        if shift > 0:
            h = torch.roll(h, shifts=(-shift, -shift), dims=(1, 2))
        nwh, nww = H // ws, W // ws
        n = ws * ws
        windows = h.view(B, nwh, ws, nww, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nwh * nww, n, C)
        qkv = F.linear(windows, attn.qkv.weight, attn.qkv.bias).view(B, nwh * nww, n, 3, nh, d)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each [B, nW, nh, n, d]
        bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
        bias = bias.view(n, n, nh).permute(2, 0, 1)  # [nh, n, n]
        if blk.attn_mask is not None:
            bias = bias[None] + blk.attn_mask[:, None]  # [nW, nh, n, n]
        else:
            bias = bias[None].expand(nwh * nww, nh, n, n)
        nw = nwh * nww
        out = F.scaled_dot_product_attention(
            q.reshape(B, nw * nh, n, d),
            k.reshape(B, nw * nh, n, d),
            v.reshape(B, nw * nh, n, d),
            attn_mask=bias.reshape(1, nw * nh, n, n).to(q.dtype),
            scale=attn.scale,
        )
        z = out.view(B, nwh, nww, nh, ws, ws, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, nh, d)
        if shift > 0:
            z = torch.roll(z, shifts=(shift, shift), dims=(1, 2))
        return z.reshape(B, T, nh, d)

    @staticmethod
    def head_result(blk, z: torch.Tensor) -> torch.Tensor:
        """Per-head contribution after the output projection, bias split evenly: [B, T, H, C]."""
        proj = blk.attn.proj
        nh, d = z.shape[-2:]
        w = proj.weight.view(-1, nh, d)  # [C, H, d]
        return torch.einsum("bthd,chd->bthc", z, w) + proj.bias / nh

    def _block(self, blk, x, prefix, table):
        x = self._run(table, f"{prefix}.hook_resid_pre", x)
        z = self._attention_z(blk, x)
        z = self._run(table, f"{prefix}.attn.hook_z", z)
        B, T, nh, d = z.shape
        attn_out = F.linear(z.reshape(B, T, nh * d), blk.attn.proj.weight, blk.attn.proj.bias)
        name = f"{prefix}.attn.hook_result"
        if name in table:
            result = self.head_result(blk, z)
            replaced = self._run(table, name, result)
            if replaced is not result:
                attn_out = replaced.sum(2)
        attn_out = self._run(table, f"{prefix}.hook_attn_out", attn_out)
        x = x + attn_out
        mlp_out = self._run(table, f"{prefix}.hook_mlp_out", blk.mlp(blk.norm2(x)))
        x = x + mlp_out
        return self._run(table, f"{prefix}.hook_resid_post", x)

    def _merge(self, merge, x, s, table):
        """LAION's PatchMerging with its LayerNorm σ exposed (sub-positions x0, x1, x2, x3)."""
        H, W = merge.input_resolution
        B, T, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = x.view(B, -1, 4 * C)
        centred, scale = _layer_norm_parts(x, merge.norm)
        scale = self._run(table, f"layers.{s}.hook_merge_scale", scale)
        normed = centred / scale[..., None] * merge.norm.weight + merge.norm.bias
        out = F.linear(normed, merge.reduction.weight)
        return self._run(table, f"layers.{s}.hook_merge_out", out)

    # ------------------------------------------------------------------ forward

    def forward(self, mel: torch.Tensor | None = None, hooks=None, start_stage: int = 0,
                resid: torch.Tensor | None = None) -> dict:
        """Run from a log-mel [B, 1001, 64], or from `resid`, the stream entering `start_stage`.

        `hooks`: a mapping or an iterable of (name, fn) pairs. Returns ``embedding``
        [B, 768] (LAION's pooled final-norm output) and ``audio_embed`` [B, 512].
        """
        if self.model.training:
            raise RuntimeError("the frozen model must stay in eval() mode")
        table = self._normalise_hooks(hooks)
        n_stages = len(self.arch.depths)
        x = self._stages(mel, table, start_stage, resid, n_stages)
        x = self._run(table, "hook_norm_in", x)
        norm = self.branch.norm
        centred, scale = _layer_norm_parts(x, norm)
        scale = self._run(table, "hook_norm_scale", scale)
        normed = centred / scale[..., None] * norm.weight + norm.bias
        embedding = self._run(table, "hook_embedding", normed.mean(1))
        audio_embed = F.normalize(self.model.audio_projection(embedding), dim=-1)
        return {"embedding": embedding, "audio_embed": audio_embed}

    __call__ = forward

    def _stages(self, mel, table, start_stage: int, resid, stop_stage: int) -> torch.Tensor:
        """The stream entering `stop_stage` (the last stage's output for stop_stage = n_stages)."""
        n_stages = len(self.arch.depths)
        if not 0 <= start_stage < n_stages:
            raise ValueError(f"start_stage must be in 0..{n_stages - 1}, got {start_stage}")
        if resid is None:
            if start_stage != 0 or mel is None:
                raise ValueError("give a log-mel, or `resid` (the stream entering `start_stage`)")
            x = self._run(table, "hook_patch_embed", self.patch_embed(mel))
        else:
            x = resid
        for s in range(start_stage, stop_stage):
            layer = self.branch.layers[s]
            for b, blk in enumerate(layer.blocks):
                x = self._block(blk, x, f"layers.{s}.blocks.{b}", table)
            if layer.downsample is not None:
                x = self._merge(layer.downsample, x, s, table)
        return x

    def run_stages(self, x: torch.Tensor, start_stage: int, stop_stage: int, hooks=None) -> torch.Tensor:
        """The stream entering `stop_stage` (the last stage's output for n_stages), from a log-mel
        (`start_stage` 0) or from the stream entering `start_stage`; hooks of the stages run fire."""
        if self.model.training:
            raise RuntimeError("the frozen model must stay in eval() mode")
        if not start_stage < stop_stage <= len(self.arch.depths):
            raise ValueError(f"stop_stage must be in {start_stage + 1}..{len(self.arch.depths)}, got {stop_stage}")
        table = self._normalise_hooks(hooks)
        if start_stage == 0:
            return self._stages(x, table, 0, None, stop_stage)
        return self._stages(None, table, start_stage, x, stop_stage)

    def stream_into(self, stage: int, mel: torch.Tensor, hooks=None) -> torch.Tensor:
        """The residual stream entering `stage` ([B, T_s, C_s]; stage 0: after the patch embedding),
        computed from a log-mel without running the later stages. Feeding it back as
        ``forward(start_stage=stage, resid=...)`` gives the full forward."""
        if self.model.training:
            raise RuntimeError("the frozen model must stay in eval() mode")
        n_stages = len(self.arch.depths)
        if not 0 <= stage < n_stages:
            raise ValueError(f"stage must be in 0..{n_stages - 1}, got {stage}")
        return self._stages(mel, self._normalise_hooks(hooks), 0, None, stage)

    def run_with_cache(self, mel=None, names: Iterable[str] | Callable[[str], bool] | None = None,
                       hooks=None, **kwargs) -> tuple[dict, dict]:
        """Forward that also returns the values at the hook points in `names` (all if None)."""
        if names is None:
            selected = list(self.names)
        elif callable(names):
            selected = [n for n in self.names if names(n)]
        else:
            selected = list(names)
        cache: dict[str, torch.Tensor] = {}

        def save(t, name):
            cache[name] = t

        pairs = list((hooks.items() if isinstance(hooks, Mapping) else hooks) or [])
        pairs += [(n, save) for n in selected]
        out = self.forward(mel, hooks=pairs, **kwargs)
        return out, cache
