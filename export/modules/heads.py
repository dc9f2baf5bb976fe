"""Hallo2's small conditioning modules: FaceLocator, ImageProjModel, AudioProjModel.

Parameter names are the ``face_locator.`` / ``imageproj.`` / ``audioproj.`` keys of net.pth with
the prefix removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HeadsConfig
from .layers import LayerNorm


class FaceLocator(nn.Module):
    """Face-region mask -> conditioning feature added after the denoiser's conv_in.

    mask (N, 3, H, W) in [0, 1] -> (N, C0, H/8, W/8). 3x3 convs, SiLU after each except conv_out
    (AnimateAnyone's PoseGuider, which Hallo2's FaceLocator is). The official code runs it on 16
    identical frames per clip; it is per image, so one frame suffices (docs/model.md §6.5).
    """

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        ch = cfg.face_locator_channels
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        blocks = []
        for i in range(len(ch) - 1):
            blocks.append(nn.Conv2d(ch[i], ch[i], 3, padding=1))
            blocks.append(nn.Conv2d(ch[i], ch[i + 1], 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(ch[-1], cfg.face_locator_out, 3, padding=1)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(mask))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class ImageProj(nn.Module):
    """ArcFace embedding (N, 512) -> image tokens (N, 4, 768): Linear, reshape, LayerNorm.

    The official uncond tokens are ``image_proj(zeros)``: LayerNorm of the bias, not zeros.
    """

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.tokens, self.dim = cfg.image_tokens, cfg.token_dim
        self.proj = nn.Linear(cfg.image_embed_dim, cfg.image_tokens * cfg.token_dim)
        self.norm = LayerNorm(cfg.token_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embedding).reshape(-1, self.tokens, self.dim))


class AudioProj(nn.Module):
    """Audio windows (B, F, 5, 12, 768) -> audio tokens (B, F, 32, 768).

    Each window is flattened in (window, layer, channel) order to 46080, then
    Linear -> ReLU -> Linear -> ReLU -> Linear -> reshape (32, 768) -> LayerNorm.
    """

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        width = cfg.audio_window * cfg.audio_blocks * cfg.audio_channels
        self.tokens, self.dim = cfg.audio_tokens, cfg.token_dim
        self.proj1 = nn.Linear(width, cfg.audio_intermediate)
        self.proj2 = nn.Linear(cfg.audio_intermediate, cfg.audio_intermediate)
        self.proj3 = nn.Linear(cfg.audio_intermediate, cfg.audio_tokens * cfg.token_dim)
        self.norm = LayerNorm(cfg.token_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        b, f = windows.shape[:2]
        x = windows.reshape(b * f, -1)  # (B*F, 5*12*768)
        # K = 46080: accumulate in fp32 even in fp16 engines (a no-op in fp32 runs)
        h = F.linear(x.float(), self.proj1.weight.float(), self.proj1.bias.float()).to(x.dtype)
        x = F.relu(self.proj2(F.relu(h)))
        x = self.norm(self.proj3(x).reshape(b * f, self.tokens, self.dim))
        return x.reshape(b, f, self.tokens, self.dim)
