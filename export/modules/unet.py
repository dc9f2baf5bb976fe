"""The two Hallo2 UNets: ReferenceNet (2-D, eval path) and the denoiser (3-D, train-branch path).

Both share one skeleton with SD1.5 / diffusers parameter names and one traversal (``_UNet.run``);
they differ only in what a "layer" does (``_layer``). Activations are ``(rows, C, H, W)``; in the
denoiser rows = 2 * F (uncond frames first, then cond frames), which is exactly what Hallo2's
inflated 3-D layers compute.

The reference "bank" of the official code (docs/model.md §1.9) is explicit here: the ReferenceNet
returns the ``norm1`` output of each of its spatial transformer blocks, in ``hooked_blocks``
order; the denoiser takes them back as inputs, split by ``split_reference_bank``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MotionConfig, UNetConfig
from .layers import (
    Attention,
    Downsample,
    FeedForward,
    GroupNorm,
    LayerNorm,
    ResnetBlock,
    TimestepEmbedding,
    Upsample,
    round_to_fp16,
    sinusoidal_embedding,
)

_TF_EPS = 1e-6  # GroupNorm eps of spatial/audio transformers and motion modules


class TransformerBlock(nn.Module):
    """BasicTransformerBlock / TemporalBasicTransformerBlock: self-attn, cross-attn, GEGLU FF."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def tail(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Everything after self-attention: x (N, L, C), tokens (N, T, Ctx)."""
        x = self.attn2(self.norm2(x), tokens) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer2D/3DModel (conv projections): norm, proj_in, one block, proj_out."""

    def __init__(self, ch: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = GroupNorm(groups, ch, eps=_TF_EPS)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(ch, heads, context_dim)])
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def tokens_in(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, H*W, C)."""
        n, c, h, w = x.shape
        return self.proj_in(self.norm(x)).reshape(n, c, h * w).transpose(1, 2)

    def tokens_out(self, t: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """(N, H*W, C) -> proj_out -> + residual (N, C, H, W)."""
        n, c, h, w = residual.shape
        return self.proj_out(t.transpose(1, 2).reshape(n, c, h, w)) + residual


class AudioBlock(nn.Module):
    """AudioTemporalBasicTransformerBlock: self-attn, 3 masked audio cross-attns, GEGLU FF.

    The zero-convs are 1x1 convs over the (sqrt L)^2 token map, i.e. per-token linear maps; they
    are applied as such (same math, no reshape, any map shape).
    """

    def __init__(self, dim: int, heads: int, audio_dim: int):
        super().__init__()
        self.zero_conv_full = nn.Conv2d(dim, dim, 1)
        self.zero_conv_face = nn.Conv2d(dim, dim, 1)
        self.zero_conv_lip = nn.Conv2d(dim, dim, 1)
        self.attn1 = Attention(dim, heads)
        self.norm1 = LayerNorm(dim)
        self.attn2_0 = Attention(dim, heads, audio_dim)
        self.attn2_1 = Attention(dim, heads, audio_dim)
        self.attn2_2 = Attention(dim, heads, audio_dim)
        self.norm2 = LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.norm3 = LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        audio: torch.Tensor | Sequence[tuple[torch.Tensor, torch.Tensor]],
        masks: Sequence[torch.Tensor],
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """x (N, L, D); audio (N, T, A) tokens, or per branch their keys/values (N, T, D);
        masks 3 x (N, L) [full, face, lip]; scale (3,)."""
        x = self.attn1(self.norm1(x)) + x
        n2 = self.norm2(x)
        branches = (
            (self.attn2_0, self.zero_conv_full),
            (self.attn2_1, self.zero_conv_face),
            (self.attn2_2, self.zero_conv_lip),
        )
        for i, (attn, conv) in enumerate(branches):
            context = audio[i] if isinstance(audio, (list, tuple)) else audio  # cached K/V
            y = attn(n2, context) * masks[i][:, :, None]
            x = x + scale[i] * F.linear(y, conv.weight[:, :, 0, 0], conv.bias)
        return self.ff(self.norm3(x)) + x


class AudioModule(nn.Module):
    """Transformer3DModel(use_audio_module=True): GroupNorm, proj_in C->D, AudioBlock, proj_out."""

    def __init__(self, ch: int, inner: int, heads: int, audio_dim: int, groups: int):
        super().__init__()
        self.norm = GroupNorm(groups, ch, eps=_TF_EPS)
        self.proj_in = nn.Conv2d(ch, inner, 1)
        self.transformer_blocks = nn.ModuleList([AudioBlock(inner, heads, audio_dim)])
        self.proj_out = nn.Conv2d(inner, ch, 1)

    def forward(
        self,
        x: torch.Tensor,
        audio: torch.Tensor,
        masks: Sequence[torch.Tensor],
        scale: torch.Tensor,
    ) -> torch.Tensor:
        n, _, h, w = x.shape
        t = self.proj_in(self.norm(x))
        d = t.shape[1]
        t = t.reshape(n, d, h * w).transpose(1, 2)  # (N, HW, D)
        t = self.transformer_blocks[0](t, audio, masks, scale)
        return self.proj_out(t.transpose(1, 2).reshape(n, d, h, w)) + x


class TemporalAttention(nn.Module):
    """AnimateDiff VersatileAttention(Temporal_Self): PE added to the input of q, k and v."""

    def __init__(self, ch: int, heads: int, max_len: int):
        super().__init__()
        self.to_q = nn.Linear(ch, ch, bias=False)
        self.to_k = nn.Linear(ch, ch, bias=False)
        self.to_v = nn.Linear(ch, ch, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])
        self.heads = heads
        self.pos_encoder = PositionalEncoding(ch, max_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, T, C): S sequences of T frames."""
        x = self.pos_encoder(x)
        s, t, c = x.shape
        h = self.heads
        q, k, v = (
            p(x).reshape(s, t, h, c // h).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v)
        )  # (S, h, T, C/h)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(s, t, c)
        return self.to_out[0](out)


class PositionalEncoding(nn.Module):
    """Sinusoidal table as a checkpoint buffer ``pe`` (1, max_len, C) (net.pth stores it)."""

    def __init__(self, ch: int, max_len: int):
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        div = torch.exp(
            torch.arange(0, ch, 2, dtype=torch.float32) * (-torch.log(torch.tensor(10000.0)) / ch)
        )
        pe = torch.zeros(1, max_len, ch)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class _TemporalBlock(nn.Module):
    def __init__(self, ch: int, heads: int, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(ch, heads, max_len) for _ in range(2)]
        )
        self.norms = nn.ModuleList([LayerNorm(ch) for _ in range(2)])
        self.ff = FeedForward(ch)
        self.ff_norm = LayerNorm(ch)


class _TemporalTransformer(nn.Module):
    def __init__(self, ch: int, cfg: MotionConfig):
        super().__init__()
        self.norm = GroupNorm(cfg.motion_norm_groups, ch, eps=_TF_EPS)
        self.proj_in = nn.Linear(ch, ch)
        self.transformer_blocks = nn.ModuleList(
            [_TemporalBlock(ch, cfg.motion_heads, cfg.motion_pe_max_len)]
        )
        self.proj_out = nn.Linear(ch, ch)


class MotionModule(nn.Module):
    """VanillaTemporalModule with the motion frames prepended (docs/model.md §1.10).

    ``forward(x, motion, batch)``: x (B*F, C, H, W) clip frames; motion (B, M, L, C) motion-frame
    features (ReferenceNet norm1 outputs); returns (B*F, C, H, W). The motion frames sit at temporal
    positions 0..M-1, the clip at M..M+F-1. Everything after the last temporal attention is
    per-token, so it runs on the F clip frames only (docs/model.md §6.7; same math).
    """

    def __init__(self, ch: int, cfg: MotionConfig):
        super().__init__()
        self.temporal_transformer = _TemporalTransformer(ch, cfg)

    def forward(self, x: torch.Tensor, motion: torch.Tensor, batch: int) -> torch.Tensor:
        tt = self.temporal_transformer
        bf, c, h, w = x.shape
        f, m = bf // batch, motion.shape[1]
        if h != w:
            raise ValueError(
                f"motion frames need square feature maps (official rearrange), got {h}x{w}"
            )
        # (B, M, L, C) -> (B, M, C, H, W): the official "b f (d1 d2) c -> b c f d1 d2", square map
        mimg = motion.to(x.dtype).transpose(2, 3).reshape(batch, m, c, h, w)
        full = torch.cat([mimg, x.reshape(batch, f, c, h, w)], dim=1)  # (B, M+F, C, H, W)
        t = tt.norm(full.reshape(batch * (m + f), c, h, w))
        t = t.reshape(batch, m + f, c, h * w).permute(0, 3, 1, 2)  # (B, HW, M+F, C)
        t = tt.proj_in(t.reshape(batch * h * w, m + f, c))  # (B*HW, M+F, C)
        blk = tt.transformer_blocks[0]
        for attn, norm in zip(blk.attention_blocks, blk.norms, strict=True):
            t = attn(norm(t)) + t
        t = t[:, m:]  # drop the motion frames: the rest is per token
        t = tt.proj_out(blk.ff(blk.ff_norm(t)) + t)
        t = t.reshape(batch, h * w, f, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)
        return t + x


class _Block(nn.Module):
    """A down/mid/up block container; attribute names give the diffusers keys."""


@dataclass
class _Ctx:
    """Per-call inputs of one traversal (built per call; nothing survives between calls)."""

    temb: torch.Tensor  # (1, T) time embedding after the MLP, shared by every row
    tokens: torch.Tensor | None  # (rows, T, Ctx) image tokens per row (None: cached K/V)
    hooked: int = 0  # hooked transformer blocks visited so far in this call
    stop: bool = False  # the ReferenceNet sets it once its last bank entry is computed
    bank: list[torch.Tensor] = field(default_factory=list)  # ReferenceNet: norm1 outputs
    frames: int = 0  # denoiser: F, frames per CFG half
    audio: torch.Tensor | None = None  # denoiser: (2F, Ta, A) audio tokens per row
    masks: tuple = ()  # denoiser: [full, face, lip] x per level (2F, L_level)
    motion_scale: torch.Tensor | None = None  # denoiser: (3,)
    ref_kv: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()  # denoiser: reference K, V per block
    motion_features: Sequence[torch.Tensor] = ()  # denoiser: per hooked block (2, M, L, C)
    image_kv: Sequence | None = None  # denoiser: cached image-token K/V per block, per row
    audio_kv: Sequence | None = None  # denoiser: cached audio K/V per block: 3 x (K, V)
    halves: int = 2  # denoiser: 2 = [uncond, cond] rows, 1 = the conditional half alone
    branch: int = -1  # feature cache branch (``Denoiser.forward``); -1: no cache
    kept: torch.Tensor | None = None  # a deep call: the feature a shallow call resumes from


class _UNet(nn.Module):
    """SD1.5 skeleton: conv_in, time_embedding, down/mid/up blocks (no head)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, n = cfg.block_out_channels, len(cfg.block_out_channels)
        g, eps, te = cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], te)
        self.hooked_blocks: list[str] = []  # bank order: forward order of spatial transformers
        self.hooked_levels: list[int] = []  # resolution level of each (0 = full latent size)
        self.down_blocks = nn.ModuleList()
        for i in range(n):
            blk = _Block()
            blk.resnets = nn.ModuleList(
                [
                    ResnetBlock(ch[max(i - 1, 0)] if j == 0 else ch[i], ch[i], g, eps, te)
                    for j in range(cfg.layers_per_block)
                ]
            )
            if cfg.down_has_attn[i]:
                blk.attentions = self._attentions(
                    ch[i], cfg.layers_per_block, f"down_blocks.{i}", i
                )
            if i < n - 1:
                blk.downsamplers = nn.ModuleList([Downsample(ch[i], cfg.downsample_padding)])
            self.down_blocks.append(blk)
        self.mid_block = _Block()
        self.mid_block.resnets = nn.ModuleList(
            [ResnetBlock(ch[-1], ch[-1], g, eps, te) for _ in range(2)]
        )
        self.mid_block.attentions = self._attentions(ch[-1], 1, "mid_block", n - 1)
        self.up_blocks = nn.ModuleList()
        rev = tuple(reversed(ch))
        for i in range(n):
            prev, out, skip_in = rev[max(i - 1, 0)], rev[i], rev[min(i + 1, n - 1)]
            blk = _Block()
            layers = cfg.layers_per_block + 1
            blk.resnets = nn.ModuleList(
                [
                    ResnetBlock(
                        (prev if j == 0 else out) + (skip_in if j == layers - 1 else out),
                        out,
                        g,
                        eps,
                        te,
                    )
                    for j in range(layers)
                ]
            )
            if cfg.up_has_attn[i]:
                blk.attentions = self._attentions(out, layers, f"up_blocks.{i}", n - 1 - i)
            if i < n - 1:
                blk.upsamplers = nn.ModuleList([Upsample(out)])
            self.up_blocks.append(blk)

    def _attentions(self, ch: int, count: int, prefix: str, level: int) -> nn.ModuleList:
        cfg = self.cfg
        self.hooked_blocks += [f"{prefix}.attentions.{j}" for j in range(count)]
        self.hooked_levels += [level] * count
        return nn.ModuleList(
            [
                SpatialTransformer(
                    ch, cfg.attention_head_dim, cfg.cross_attention_dim, cfg.norm_num_groups
                )
                for _ in range(count)
            ]
        )

    def hooked_shapes(self, latent_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """(L, C) of each bank entry, in ``hooked_blocks`` order, for a latent of that size."""
        return [
            ((latent_hw[0] >> lv) * (latent_hw[1] >> lv), self.cfg.block_out_channels[lv])
            for lv in self.hooked_levels
        ]

    def time_embed(self, timestep: torch.Tensor) -> torch.Tensor:
        """timestep () or (1,) -> (1, 4*C0); one value for every row, as in the official calls."""
        cfg = self.cfg
        t = sinusoidal_embedding(
            timestep.reshape(-1)[:1], cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift
        )
        return self.time_embedding(t.to(self.conv_in.weight.dtype))

    def _layer(
        self, blk: _Block, kind: str, level: int, j: int, x: torch.Tensor, ctx: _Ctx
    ) -> torch.Tensor:
        raise NotImplementedError

    def run(self, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        """Traverse down, mid, up; ``_layer`` runs what follows each resnet. x (rows, C, H, W)."""
        n = len(self.down_blocks)
        skips = [x]
        for i, blk in enumerate(self.down_blocks):
            for j, res in enumerate(blk.resnets):
                x = self._layer(blk, "down", i, j, res(x, res.time_bias(ctx.temb)), ctx)
                skips.append(x)
            if hasattr(blk, "downsamplers"):
                x = blk.downsamplers[0](x)
                skips.append(x)
        mid = self.mid_block
        x = mid.resnets[0](x, mid.resnets[0].time_bias(ctx.temb))
        x = self._layer(mid, "mid", n - 1, 0, x, ctx)
        x = mid.resnets[1](x, mid.resnets[1].time_bias(ctx.temb))
        for i, blk in enumerate(self.up_blocks):
            for j, res in enumerate(blk.resnets):
                if i == n - 1 and j == len(blk.resnets) - 1 - ctx.branch:
                    ctx.kept = x  # where a shallow call resumes (ctx.branch >= 0 only)
                x = torch.cat([x, skips.pop()], dim=1)
                x = self._layer(blk, "up", n - 1 - i, j, res(x, res.time_bias(ctx.temb)), ctx)
                if ctx.stop:
                    return x
            if hasattr(blk, "upsamplers"):
                x = blk.upsamplers[0](x)
        return x

    def run_shallow(self, x: torch.Tensor, cached: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        """The cheap traversal of a feature cache (DeepCache, Ma et al. 2024) at ``ctx.branch``
        = b: the first b layers of the top down block, then the last b + 1 layers of the top up
        block resumed from ``cached`` (a deep call's ``ctx.kept``), each taking the skip it
        takes in ``run``. Everything below is not computed: its output is the cached feature."""
        b, top, down = ctx.branch, self.up_blocks[-1], self.down_blocks[0]
        skips = [x]
        for j in range(b):
            res = down.resnets[j]
            x = self._layer(down, "down", 0, j, res(x, res.time_bias(ctx.temb)), ctx)
            skips.append(x)
        layers = len(top.resnets)
        if hasattr(top, "attentions"):  # the top up block's hooked blocks are the last ones
            ctx.hooked = len(self.hooked_blocks) - (b + 1)
        x = cached
        for j in range(layers - 1 - b, layers):
            res = top.resnets[j]
            x = torch.cat([x, skips.pop()], dim=1)
            x = self._layer(top, "up", 0, j, res(x, res.time_bias(ctx.temb)), ctx)
        return x

    def cache_branches(self) -> int:
        """How many feature-cache branches there are: 0 .. layers_per_block."""
        return self.cfg.layers_per_block + 1

    def cached_feature_shape(self, branch: int, rows: int, latent: int) -> tuple[int, ...]:
        """The shape of the feature a deep call keeps for a shallow one at ``branch``."""
        if not 0 <= branch < self.cache_branches():
            raise ValueError(f"cache branch {branch}: must lie in 0..{self.cache_branches() - 1}")
        top = self.up_blocks[-1]
        first = len(top.resnets) - 1 - branch
        ch = self.cfg.block_out_channels
        width = (ch[1] if len(ch) > 1 else ch[0]) if first == 0 else ch[0]
        return (rows, width, latent, latent)


class ReferenceNet(_UNet):
    """Hallo2 ReferenceNet (no conv_norm_out / conv_out): returns the reference bank.

    ``forward(latents, timestep, tokens)``: latents (N, 4, h, w); timestep () (official: 0);
    tokens (N, T, Ctx) per row (official: ``reference_tokens_official``). Returns one
    ``norm1`` output (N, L_i, C_i) per entry of ``hooked_blocks``. Nothing after the last bank
    entry is computed (the official UNet output is thrown away).
    """

    def _layer(self, blk, kind, level, j, x, ctx):
        if not hasattr(blk, "attentions"):
            return x
        st = blk.attentions[j]
        tb = st.transformer_blocks[0]
        t = st.tokens_in(x)
        n1 = tb.norm1(t)
        ctx.bank.append(n1)
        ctx.hooked += 1
        if ctx.hooked == len(self.hooked_blocks):
            ctx.stop = True
            return x
        t = tb.tail(tb.attn1(n1) + t, ctx.tokens)
        return st.tokens_out(t, x)

    def forward(
        self, latents: torch.Tensor, timestep: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        ctx = _Ctx(temb=self.time_embed(timestep), tokens=tokens)
        self.run(self.conv_in(latents), ctx)
        return tuple(ctx.bank)


class Denoiser(_UNet):
    """Hallo2 UNet3DConditionModel as the official inference runs it (train branch, §1.4).

    Per layer of a cross-attention block: resnet -> spatial transformer reading the reference ->
    audio module -> motion module with the motion frames prepended. DownBlock3D / UpBlock3D (the
    8x8 levels) run only their resnets: their motion modules are loaded and never called. The
    unconditional half (rows 0..F-1) attends to itself only; the conditional half to itself plus
    the reference, frame j reading ``ref[(F + j) % 2]`` (the official interleaved repeat).
    """

    def __init__(self, cfg: UNetConfig, motion: MotionConfig):
        super().__init__(cfg)
        ch, n = cfg.block_out_channels, len(cfg.block_out_channels)
        heads, adim, g = cfg.attention_head_dim, motion.audio_attention_dim, cfg.norm_num_groups
        rev = tuple(reversed(ch))
        for i, blk in enumerate(self.down_blocks):
            blk.motion_modules = nn.ModuleList(
                [MotionModule(ch[i], motion) for _ in range(cfg.layers_per_block)]
            )
            if cfg.down_has_attn[i]:
                # Official: audio width = the layer's *input* channels (docs/model.md §2.4).
                ins = [ch[max(i - 1, 0)] if j == 0 else ch[i] for j in range(cfg.layers_per_block)]
                blk.audio_modules = nn.ModuleList(
                    [AudioModule(ch[i], d, heads, adim, g) for d in ins]
                )
        self.mid_block.motion_modules = nn.ModuleList([MotionModule(ch[-1], motion)])
        self.mid_block.audio_modules = nn.ModuleList([AudioModule(ch[-1], ch[-1], heads, adim, g)])
        for i, blk in enumerate(self.up_blocks):
            layers = cfg.layers_per_block + 1
            blk.motion_modules = nn.ModuleList(
                [MotionModule(rev[i], motion) for _ in range(layers)]
            )
            if cfg.up_has_attn[i]:
                skip_in = rev[min(i + 1, n - 1)]  # official: the block's in_channels
                blk.audio_modules = nn.ModuleList(
                    [AudioModule(rev[i], skip_in, heads, adim, g) for _ in range(layers)]
                )
        self.conv_norm_out = GroupNorm(g, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def _layer(self, blk, kind, level, j, x, ctx):
        if not hasattr(blk, "attentions"):
            return x  # train branch: DownBlock3D / UpBlock3D skip their motion modules
        x = self._spatial(blk.attentions[j], x, ctx)
        masks = [m[level] for m in ctx.masks]
        audio = ctx.audio if ctx.audio_kv is None else ctx.audio_kv[ctx.hooked - 1]
        x = blk.audio_modules[j](x, audio, masks, ctx.motion_scale)
        motion = ctx.motion_features[ctx.hooked - 1]
        return blk.motion_modules[j](x, motion, ctx.halves)

    def reference_kv(
        self, ref_features: Sequence[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Reference features (2, L, C) per hooked block -> their keys and values (2, L, C).

        The reader projects the fp16-rounded ReferenceNet features with each block's own
        attn1.to_k / to_v (docs/model.md §1.9); they depend only on the portrait, so this runs once
        per video rather than in every step (§6.2).
        """
        out = []
        for name, ref in zip(self.hooked_blocks, ref_features, strict=True):
            attn1 = self.get_submodule(name).transformer_blocks[0].attn1
            out.append(attn1.project_kv(round_to_fp16(ref).to(attn1.to_k.weight.dtype)))
        return out

    def _spatial(self, st: SpatialTransformer, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        """Reference-reading spatial transformer: uncond plain self-attn, cond attends [x; ref]."""
        tb = st.transformer_blocks[0]
        k_ref, v_ref = ctx.ref_kv[ctx.hooked]  # (2, L, C) each
        ctx.hooked += 1
        t = st.tokens_in(x)
        n1 = tb.norm1(t)
        f = ctx.frames
        # official interleaving: frame j reads ref[(F + j) % 2]. Made on the device by arange,
        # not from a Python list: a list is a host-to-device copy, illegal in a CUDA graph capture
        rows = (torch.arange(f, device=x.device) + f) % 2
        cond = n1[f:] if ctx.halves == 2 else n1  # the conditional rows
        k_self, v_self = tb.attn1.project_kv(cond)
        k = torch.cat([k_self, k_ref.index_select(0, rows).to(k_self.dtype)], dim=1)  # (F, 2L, C)
        v = torch.cat([v_self, v_ref.index_select(0, rows).to(v_self.dtype)], dim=1)
        a = tb.attn1.attend(tb.attn1.to_q(cond), k, v)
        if ctx.halves == 2:  # uncond half: plain self-attention, no reference
            a = torch.cat([tb.attn1(n1[:f]), a])
        tokens = ctx.tokens if ctx.image_kv is None else ctx.image_kv[ctx.hooked - 1]
        t = tb.tail(a + t, tokens)
        return st.tokens_out(t, x)

    def audio_attentions(self, block: str) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The three audio cross-attentions paired with hooked block ``block``."""
        audio = self.get_submodule(block.replace("attentions", "audio_modules"))
        tb = audio.transformer_blocks[0]
        return tb.attn2_0, tb.attn2_1, tb.attn2_2

    def token_kv(
        self, image_tokens: torch.Tensor | None, audio_tokens: torch.Tensor | None
    ) -> tuple[list | None, list | None]:
        """Keys/values of the cross-attention tokens, projected once (docs/model.md §6.5-6.6): they
        are constant over a video (image tokens) or a clip (audio tokens), not per step.

        image_tokens (2, T, Ctx) -> per hooked block (K, V), each (2, T, C); audio_tokens
        (2, F, Ta, A) -> per hooked block 3 x (K, V), each (2F, Ta, D). Either may be None.
        """
        image = audio = None
        if image_tokens is not None:
            image = [
                self.get_submodule(b).transformer_blocks[0].attn2.project_kv(image_tokens)
                for b in self.hooked_blocks
            ]
        if audio_tokens is not None:
            rows = audio_tokens.reshape(-1, *audio_tokens.shape[2:])  # (2F, Ta, A)
            audio = [
                [attn.project_kv(rows) for attn in self.audio_attentions(b)]
                for b in self.hooked_blocks
            ]
        return image, audio

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        image_tokens: torch.Tensor,
        audio_tokens: torch.Tensor,
        face_feature: torch.Tensor,
        ref_kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
        motion_features: Sequence[torch.Tensor],
        full_masks: Sequence[torch.Tensor],
        face_masks: Sequence[torch.Tensor],
        lip_masks: Sequence[torch.Tensor],
        motion_scale: torch.Tensor,
        token_kv: tuple[list | None, list | None] = (None, None),
        branch: int = -1,
        cached: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One official denoiser call on both CFG halves.

        sample (2, 4, F, h, w) [uncond, cond] latents; timestep () or (1,); image_tokens
        (2, T, Ctx); audio_tokens (2, F, Ta, A) (uncond = zeros in the official pipeline);
        face_feature (2, C0, F or 1, h, w) (uncond = zeros); ref_kv: per ``hooked_blocks`` entry
        the reference keys/values ``reference_kv(ref_features)``, each (2, L, C);
        motion_features: per entry (2, M, L, C) (``split_reference_bank``); masks:
        per resolution level, (F or 1, L_level) shared by both halves; motion_scale (3,)
        [pose, face, lip]. token_kv: ``token_kv(image_tokens, audio_tokens)`` computed once
        per video / clip; where given, those tokens are not projected again (and may be None).
        Returns the v-prediction (2, 4, F, h, w).

        Speed presets (not the official path): a batch of 1 is the conditional half alone, every
        per-half input then holding that half only (ref_kv stays (2, L, C): the conditional
        frames read both reference rows). ``branch`` >= 0 caches features (``run_shallow``):
        without ``cached`` the full traversal also returns the feature a shallow call resumes
        from, ``(v, feature)``; with ``cached`` (that feature) only the shallow part runs.
        """
        b, c, f, h, w = sample.shape
        if b not in (1, 2):
            raise ValueError(
                f"sample must hold the two CFG halves [uncond, cond] or the conditional one, "
                f"got batch {b}"
            )
        if cached is not None and branch < 0:
            raise ValueError("a cached feature needs its cache branch")
        rows = b * f
        x = sample.transpose(1, 2).reshape(rows, c, h, w)
        face = face_feature.transpose(1, 2).expand(b, f, -1, h, w).reshape(rows, -1, h, w)
        n_levels = len(self.down_blocks)

        # a shallow call (``cached``) gives None for what its layers do not read
        def per_row(masks: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
            return [
                None if m is None else m.reshape(-1, m.shape[-1]).expand(f, -1).repeat(b, 1)
                for m in masks[:n_levels]
            ]  # (2F, L_level)

        image_kv, audio_kv = token_kv
        if image_kv is not None:  # per CFG half -> per row, as the tokens would be
            image_kv = [
                None
                if kv is None
                else (kv[0].repeat_interleave(f, 0), kv[1].repeat_interleave(f, 0))
                for kv in image_kv
            ]
        ctx = _Ctx(
            temb=self.time_embed(timestep),
            tokens=None if image_kv else image_tokens.repeat_interleave(f, dim=0),  # (2F, T, Ctx)
            frames=f,
            audio=None if audio_kv else audio_tokens.reshape(rows, *audio_tokens.shape[2:]),
            image_kv=image_kv,
            audio_kv=audio_kv,
            masks=(per_row(full_masks), per_row(face_masks), per_row(lip_masks)),
            motion_scale=motion_scale.to(x.dtype),
            ref_kv=ref_kv,
            motion_features=[None if m is None else round_to_fp16(m) for m in motion_features],
            halves=b,
            branch=branch,
        )
        x = self.conv_in(x) + face
        x = self.run(x, ctx) if cached is None else self.run_shallow(x, cached, ctx)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        v = x.reshape(b, f, -1, h, w).transpose(1, 2)
        if branch >= 0 and cached is None:
            assert ctx.kept is not None
            return v, ctx.kept
        return v
