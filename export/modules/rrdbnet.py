"""RealESRGAN RRDBNet (``realesrgan/RealESRGAN_x2plus.pth``), run untiled (docs/model.md §2.8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RRDBConfig


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class _DenseBlock(nn.Module):
    """ResidualDenseBlock: 5 densely connected 3x3 convs, output scaled by 0.2 + input."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        for i in range(5):
            cin = feat + i * grow
            setattr(self, f"conv{i + 1}", nn.Conv2d(cin, grow if i < 4 else feat, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(_lrelu(getattr(self, f"conv{i}")(torch.cat(feats, dim=1))))
        return self.conv5(torch.cat(feats, dim=1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.rdb1 = _DenseBlock(feat, grow)
        self.rdb2 = _DenseBlock(feat, grow)
        self.rdb3 = _DenseBlock(feat, grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """Image (N, 3, H, W) in [0, 1] -> (N, 3, 2H, 2W) for x2plus (H, W even).

    The x2 model pixel-unshuffles by 2 first (12 channels), then upsamples 4x by two nearest
    2x + conv stages, for a net 2x. Output is not clamped (the caller clamps, as RealESRGANer).
    """

    def __init__(self, cfg: RRDBConfig):
        super().__init__()
        self.unshuffle = {4: 1, 2: 2, 1: 4}[cfg.scale]
        f, g = cfg.num_feat, cfg.num_grow_ch
        self.conv_first = nn.Conv2d(cfg.num_in_ch * self.unshuffle**2, f, 3, padding=1)
        self.body = nn.Sequential(*[_RRDB(f, g) for _ in range(cfg.num_block)])
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        self.conv_up1 = nn.Conv2d(f, f, 3, padding=1)
        self.conv_up2 = nn.Conv2d(f, f, 3, padding=1)
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, cfg.num_out_ch, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(image, self.unshuffle) if self.unshuffle > 1 else image
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = _lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        feat = _lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))
