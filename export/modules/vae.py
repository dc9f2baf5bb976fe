"""AutoencoderKL (sd-vae-ft-mse) as two inference modules with diffusers parameter names.

``VAEEncoder``: pixels in [-1, 1] -> latent mean x scaling_factor (Hallo2 uses the mean, never a
sample). ``VAEDecoder``: scaled latents -> pixels in [-1, 1] (unclamped, as ``vae.decode``).
Keys: the encoder owns ``encoder.*`` and ``quant_conv.*``, the decoder ``decoder.*`` and
``post_quant_conv.*``, so each loads from its half of the VAE checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VAEConfig
from .layers import Downsample, GroupNorm, ResnetBlock, Upsample

_EPS = 1e-6  # every VAE GroupNorm


class VAEAttention(nn.Module):
    """Mid-block single-head self-attention over H*W tokens (group_norm, to_q/k/v, to_out.0)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, ch, eps=_EPS)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = self.group_norm(x).reshape(n, c, h * w).transpose(1, 2)  # (N, HW, C)
        q, k, v = (p(t).unsqueeze(1) for p in (self.to_q, self.to_k, self.to_v))  # (N, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.to_out[0](out).transpose(1, 2).reshape(n, c, h, w)
        return x + out


class _MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups, _EPS, None) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(ch, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class _EncBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, down: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if i == 0 else cout, cout, groups, _EPS, None) for i in range(layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample(cout, asym_pad=True)]) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class _DecBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if i == 0 else cout, cout, groups, _EPS, None) for i in range(layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if up else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class _Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [
                _EncBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < len(ch) - 1)
                for i in range(len(ch))
            ]
        )
        self.mid_block = _MidBlock(ch[-1], g)
        self.conv_norm_out = GroupNorm(g, ch[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for blk in self.down_blocks:
            x = blk(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class _Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = _MidBlock(ch[0], g)
        self.up_blocks = nn.ModuleList(
            [
                _DecBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < len(ch) - 1)
                for i in range(len(ch))
            ]
        )
        self.conv_norm_out = GroupNorm(g, ch[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for blk in self.up_blocks:
            x = blk(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VAEEncoder(nn.Module):
    """pixels (N, 3, H, W) in [-1, 1] -> latent mean x scaling_factor (N, 4, H/8, W/8)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.scaling_factor = cfg.scaling_factor
        self.latent_channels = cfg.latent_channels
        self.encoder = _Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(pixels))  # (N, 2*4, h, w): mean, logvar
        return moments[:, : self.latent_channels] * self.scaling_factor


class VAEDecoder(nn.Module):
    """latents (N, 4, h, w) x scaling_factor -> pixels (N, 3, 8h, 8w), nominally in [-1, 1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.scaling_factor = cfg.scaling_factor
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = _Decoder(cfg)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latents / self.scaling_factor))
