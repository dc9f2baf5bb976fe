"""Building blocks shared by the UNets and the VAE, with diffusers' parameter names.

Everything works on 4-D ``(N, C, H, W)`` image batches or 3-D ``(N, L, C)`` token batches. The
denoiser's "inflated" 3-D layers are these same layers applied to ``N = batch * frames`` rows:
Hallo2's InflatedConv3d and InflatedGroupNorm reshape to exactly that, so per-frame statistics
come for free and nothing crosses frames except the motion modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm_in_fp32(fn, x: torch.Tensor, arg, weight, bias, eps: float) -> torch.Tensor:
    """``fn(x, arg, weight, bias, eps)`` (F.group_norm / F.layer_norm) in fp32, cast back."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return fn(x.float(), arg, w, b, eps).to(x.dtype)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose statistics are computed in fp32 for fp16 inputs (same keys; a no-op in
    fp32). fp16 exports thus keep normalisation in fp32 (docs/model.md §6.11,
    docs/architecture.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return _norm_in_fp32(F.group_norm, x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in fp32 for fp16 inputs (same keys; a no-op in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return _norm_in_fp32(
            F.layer_norm, x, self.normalized_shape, self.weight, self.bias, self.eps
        )


class Attention(nn.Module):
    """Multi-head attention with diffusers names: to_q/to_k/to_v (no bias), to_out.0 (bias).

    ``forward(x, context)``: x (N, Lq, C) queries; context (N, Lk, Ck) keys/values (None = x).
    Uses ``scaled_dot_product_attention`` so no score tensor is materialised where a fused kernel
    exists, and so exporters can see a single attention pattern.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        context_dim: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        out_bias: bool = True,
    ):
        super().__init__()
        head_dim = head_dim or dim // heads
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=out_bias)])

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context`` (N, Lk, Ck), each (N, Lk, inner)."""
        return self.to_k(context), self.to_v(context)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Projected q (N, Lq, D), k/v (N, Lk, D) -> output (N, Lq, C) after to_out."""
        n, lq, d = q.shape
        h = self.heads
        q = q.reshape(n, lq, h, d // h).transpose(1, 2)  # (N, h, Lq, d/h)
        k = k.reshape(n, k.shape[1], h, d // h).transpose(1, 2)
        v = v.reshape(n, v.shape[1], h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(n, lq, d)  # (N, Lq, D)
        return self.to_out[0](out)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """context: tokens to project, or their keys and values already projected (cached)."""
        if isinstance(context, tuple):
            k, v = context
        else:
            k, v = self.project_kv(x if context is None else context)
        return self.attend(self.to_q(x), k, v)


class GEGLU(nn.Module):
    """diffusers GEGLU: one projection to 2x width, value * gelu(gate) (exact erf GELU)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """diffusers FeedForward(geglu, mult 4): keys ff.net.0.proj and ff.net.2 (net.1 is dropout)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList(
            [GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class ResnetBlock(nn.Module):
    """diffusers ResnetBlock2D / Hallo2 ResnetBlock3D (per-frame), time embedding optional.

    ``forward(x, temb_proj)``: x (N, Cin, H, W); temb_proj (N, Cout) already passed through
    ``time_emb_proj(silu(temb))`` (see ``time_bias``) or None for the VAE's resnets.
    """

    def __init__(self, cin: int, cout: int, groups: int, eps: float, temb_dim: int | None):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2 = GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def time_bias(self, temb: torch.Tensor) -> torch.Tensor:
        """temb (B, T) -> per-channel bias (B, Cout); constant per step, so it can be cached."""
        return self.time_emb_proj(F.silu(temb))

    def forward(self, x: torch.Tensor, temb_bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if temb_bias is not None:
            h = h + temb_bias[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``conv``). ``asym_pad``: the VAE pads (0,1,0,1) and uses padding 0."""

    def __init__(self, ch: int, padding: int = 1, asym_pad: bool = False):
        super().__init__()
        self.asym_pad = asym_pad
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0 if asym_pad else padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asym_pad:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x then 3x3 conv (key ``conv``); the 3-D version is the same per frame."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def sinusoidal_embedding(
    t: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """diffusers ``get_timestep_embedding``: t (B,) -> (B, dim) fp32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """SD time MLP: linear_1 -> SiLU -> linear_2 (keys time_embedding.linear_1/2)."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def round_to_fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to fp16 precision, keep the dtype (docs/model.md §7: the reader casts banks to
    fp16)."""
    return x if x.dtype == torch.float16 else x.to(torch.float16).to(x.dtype)
