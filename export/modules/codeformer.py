"""Hallo2's temporal CodeFormer (``hallo2/net_g.pth``, key ``params_ema``), written for export.

Same math as ``basicsr/archs/codeformer_arch.py`` (docs/model.md §2.8) with the export hazards of §4
removed: attention through ``scaled_dot_product_attention`` (no head-averaged weights), SiLU for
the scripted swish, codebook lookup by gather instead of a one-hot scatter + matmul, AdaIN written
out with the unbiased variance, no CPU round trip of the skip features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CodeFormerConfig
from .layers import GroupNorm, LayerNorm


def _norm(ch: int) -> nn.GroupNorm:
    return GroupNorm(32, ch, eps=1e-6)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_out = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (x if self.conv_out is None else self.conv_out(x)) + h


class _AttnBlock(nn.Module):
    """Single-head self-attention over H*W with 1x1-conv projections (q, k, v, proj_out)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = self.norm(x)
        q, k, v = (
            p(t).reshape(n, 1, c, h * w).transpose(2, 3) for p in (self.q, self.k, self.v)
        )  # (N, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(n, c, h, w)
        return x + self.proj_out(out)


class _Down(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Up(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], cin: int, cout: int, res: int, cfg: CodeFormerConfig) -> int:
    """One resolution level: ``res_blocks`` resnets, each followed by attention at 16x16."""
    for _ in range(cfg.res_blocks):
        blocks.append(_ResBlock(cin, cout))
        cin = cout
        if res == cfg.attn_resolution:
            blocks.append(_AttnBlock(cin))
    return cin


def _vq_blocks(cfg: CodeFormerConfig, encoder: bool) -> nn.ModuleList:
    """VQGAN encoder (image -> emb_dim at 16x16) or generator (the mirror), as flat block lists."""
    nf, mult, n = cfg.nf, cfg.ch_mult, len(cfg.ch_mult)
    blocks: list[nn.Module] = []
    res = cfg.img_size
    if encoder:
        blocks.append(nn.Conv2d(3, nf, 3, padding=1))
        cin = nf  # official in_ch_mult = (1,) + ch_mult
        for i in range(n):
            cin = _level(blocks, cin, nf * mult[i], res, cfg)
            if i != n - 1:
                blocks.append(_Down(cin))
                res //= 2
        blocks += [_ResBlock(cin, cin), _AttnBlock(cin), _ResBlock(cin, cin)]
        blocks += [_norm(cin), nn.Conv2d(cin, cfg.emb_dim, 3, padding=1)]  # no swish here
        return nn.ModuleList(blocks)
    cin = nf * mult[-1]
    res = cfg.img_size // 2 ** (n - 1)
    blocks.append(nn.Conv2d(cfg.emb_dim, cin, 3, padding=1))
    blocks += [_ResBlock(cin, cin), _AttnBlock(cin), _ResBlock(cin, cin)]
    for i in reversed(range(n)):
        cin = _level(blocks, cin, nf * mult[i], res, cfg)
        if i != 0:
            blocks.append(_Up(cin))
            res *= 2
    blocks += [_norm(cin), nn.Conv2d(cin, 3, 3, padding=1)]  # no swish here
    return nn.ModuleList(blocks)


class _Stack(nn.Module):
    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.blocks = blocks


class _MHA(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight/bias, out_proj), computed with SDPA.

    ``forward(q_in, k_in, v_in)``: sequence-first (L, N, E), like the official module.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self,
        q_in: torch.Tensor,
        k_in: torch.Tensor,
        v_in: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``key_mask`` (L,) bool: keys that may be attended to (all when None)."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        length, n, e = q_in.shape
        h = self.heads
        q, k, v = (
            F.linear(x, w, b).reshape(length, n, h, e // h).permute(1, 2, 0, 3)
            for x, w, b in ((q_in, wq, bq), (k_in, wk, bk), (v_in, wv, bv))
        )  # (N,h,L,d)
        mask = None if key_mask is None else key_mask[None, :]  # (1, L): the same for every query
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.permute(2, 0, 1, 3).reshape(length, n, e)
        return self.out_proj(out)


class _TransformerSALayer(nn.Module):
    """Spatial pre-LN MHA + FFN, then temporal pre-LN MHA over frames + FFN (no temporal PE)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.self_attn = _MHA(dim, heads)
        self.linear1 = nn.Linear(dim, mlp)
        self.linear2 = nn.Linear(mlp, dim)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.temp_norm = LayerNorm(dim)
        self.temp_attn = _MHA(dim, heads)
        self.temp_ffn_norm = LayerNorm(dim)
        self.temp_linear1 = nn.Linear(dim, mlp)
        self.temp_linear2 = nn.Linear(mlp, dim)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, batch: int, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (D, B*F, E): D tokens per frame, frames of window b at rows b*F..; pos (D, 1, E).
        ``frame_mask`` (F,) bool: frames the temporal attention may read (None: all)."""
        d, bf, e = x.shape
        f = bf // batch
        t = self.norm1(x)
        x = x + self.self_attn(t + pos, t + pos, t)
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        # official "d (b f) c -> f (b d) c": attend over the F frames of each window and token
        xt = x.reshape(d, batch, f, e).permute(2, 1, 0, 3).reshape(f, batch * d, e)
        pt = pos.transpose(0, 1).repeat(1, batch, 1)  # (1, B*D, E)
        t = self.temp_norm(xt)
        xt = xt + self.temp_attn(t + pt, t + pt, t, frame_mask)
        x = xt.reshape(f, batch, d, e).permute(2, 1, 0, 3).reshape(d, bf, e)
        return x + self.temp_linear2(F.gelu(self.temp_linear1(self.temp_ffn_norm(x))))


class _Fuse(nn.Module):
    """Fuse_sft_block: out = w * (dec * scale + shift) + dec."""

    def __init__(self, ch: int):
        super().__init__()
        self.encode_enc = _ResBlock(2 * ch, ch)
        self.scale = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 3, padding=1)
        )
        self.shift = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, enc: torch.Tensor, dec: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        e = self.encode_enc(torch.cat([enc, dec], dim=1))
        return w * (dec * self.scale(e) + self.shift(e)) + dec


class _Quantize(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)


def _adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN with the official unbiased variance: (N, C, H, W) each."""

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(-1)[..., None, None], (flat.var(-1, unbiased=True) + eps).sqrt()[
            ..., None, None
        ]

    cm, cs = stats(content)
    sm, ss = stats(style)
    return (content - cm) / cs * ss + sm


class CodeFormer(nn.Module):
    """Face crops (B, F, 3, 512, 512) in [-1, 1], fidelity w () -> restored (B, F, 3, 512, 512).

    Frames of a window attend to each other in every transformer layer (temporal alignment);
    with w = 0 the SFT fusion is skipped in the official code, which ``w * (...)`` reproduces.
    """

    def __init__(self, cfg: CodeFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = _Stack(_vq_blocks(cfg, encoder=True))
        self.quantize = _Quantize(cfg.codebook_size, cfg.emb_dim)
        self.generator = _Stack(_vq_blocks(cfg, encoder=False))
        self.position_emb = nn.Parameter(torch.zeros(cfg.latent_size, cfg.dim_embd))
        self.feat_emb = nn.Linear(cfg.emb_dim, cfg.dim_embd)
        self.ft_layers = nn.ModuleList(
            [
                _TransformerSALayer(cfg.dim_embd, cfg.n_head, cfg.dim_embd * 2)
                for _ in range(cfg.n_layers)
            ]
        )
        self.idx_pred_layer = nn.Sequential(
            LayerNorm(cfg.dim_embd), nn.Linear(cfg.dim_embd, cfg.codebook_size, bias=False)
        )
        self.fuse_convs_dict = nn.ModuleDict({s: _Fuse(cfg.channels[s]) for s in cfg.connect_list})
        # Official: skip features leave the encoder after its 2nd resnet of a level; the
        # generator fuses after its 1st resnet of the same level (block indices by resolution).
        self.enc_taps = {self._block_at(s, encoder=True): s for s in cfg.connect_list}
        self.gen_taps = {self._block_at(s, encoder=False): s for s in cfg.connect_list}

    def _block_at(self, size: str, encoder: bool) -> int:
        """Index of the block whose output is fused at resolution ``size`` (the official dicts)."""
        blocks = (self.encoder if encoder else self.generator).blocks
        res, seen = (
            self.cfg.img_size if encoder else self.cfg.img_size >> (len(self.cfg.ch_mult) - 1),
            0,
        )
        for i, blk in enumerate(blocks):
            if isinstance(blk, _ResBlock) and str(res) == size:
                seen += 1
                if seen == (self.cfg.res_blocks if encoder else 1):
                    return i
            if isinstance(blk, _Down):
                res //= 2
            elif isinstance(blk, _Up):
                res *= 2
        raise ValueError(f"no block at resolution {size}")

    def forward(self, frames: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The official call: every frame of each window encoded, attended and decoded."""
        b, f = frames.shape[:2]
        lq, skips = self.encode(frames.reshape(b * f, *frames.shape[2:]))
        idx = self.codes(lq, b)
        return self.decode(idx, lq, skips, w).reshape(b, f, *frames.shape[2:])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-frame work: faces (N, 3, S, S) -> lq features (N, emb, 16, 16) + SFT skips."""
        skips = {}
        for i, blk in enumerate(self.encoder.blocks):
            x = blk(x)
            if i in self.enc_taps:
                skips[self.enc_taps[i]] = x
        return x, skips

    def codes(
        self, lq: torch.Tensor, batch: int = 1, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The temporal part: lq (B*F, emb, 16, 16) of ``batch`` windows -> code indices
        (HW, B*F). ``frame_mask`` (F,) bool: frames the others may attend to."""
        q = self.feat_emb(lq.flatten(2).permute(2, 0, 1))  # (HW, BF, E)
        pos = self.position_emb[:, None]  # (HW, 1, E), added to q and k only
        for layer in self.ft_layers:
            q = layer(q, pos, batch, frame_mask)
        return self.idx_pred_layer(q).argmax(-1)  # (HW, BF): top-1 of softmax = argmax

    def decode(
        self, idx: torch.Tensor, lq: torch.Tensor, skips: dict[str, torch.Tensor], w: torch.Tensor
    ) -> torch.Tensor:
        """Per-frame work again: codes (HW, N) + that frame's lq and skips -> faces (N, 3, S, S)."""
        n, e, h, wd = lq.shape
        quant = self.quantize.embedding.weight[idx.transpose(0, 1)]  # (N, HW, emb)
        x = _adain(quant.transpose(1, 2).reshape(n, e, h, wd), lq)
        for i, blk in enumerate(self.generator.blocks):
            x = blk(x)
            if i in self.gen_taps:
                size = self.gen_taps[i]
                x = self.fuse_convs_dict[size](skips[size], x, w)
        return x

    def window(
        self,
        faces: torch.Tensor,
        context: torch.Tensor,
        context_valid: torch.Tensor,
        w: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One streamed window: only the ``faces`` (N, 3, S, S) new to it are encoded and
        decoded; ``context`` (C, emb, 16, 16) holds the lq features of the frames it overlaps
        with the previous window (``context_valid`` (C,) > 0.5 marks real ones; the first window
        has none). Returns the new frames restored and their lq features (the next context).

        Equal to the official window over [context frames, new frames] with the overlap's
        outputs dropped: the encoder and generator are per frame, only ``codes`` mixes frames,
        and a masked-out context frame is exactly absent from every softmax."""
        lq, skips = self.encode(faces)
        window = torch.cat([context.to(lq.dtype), lq], dim=0)
        keep = torch.cat([context_valid > 0.5, torch.ones_like(lq[:, 0, 0, 0], dtype=torch.bool)])
        idx = self.codes(window, 1, keep)[:, context.shape[0] :]
        return self.decode(idx, lq, skips, w), lq
