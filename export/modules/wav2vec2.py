"""wav2vec2-base as Hallo2 uses it: features interpolated to the video frame rate *before* the
transformer, all transformer layers returned (docs/model.md §1.3, §2.6).

Parameter names are the checkpoint's with ``wav2vec2.`` stripped, ``lm_head`` and
``masked_spec_embed`` dropped and the positional conv's weight norm folded into ``weight``
(``checkpoints.WAV2VEC_RENAMES``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Wav2Vec2Config
from .layers import GroupNorm, LayerNorm


class _ConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int, bias: bool, group_norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride=s, bias=bias)
        # "group" feature-extractor norm: GroupNorm with one group per channel, first layer only.
        self.layer_norm = GroupNorm(cout, cout, affine=True) if group_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.gelu(x)


class _FeatureExtractor(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        dims = (1, *cfg.conv_dim)
        self.conv_layers = nn.ModuleList(
            [
                _ConvLayer(
                    dims[i],
                    dims[i + 1],
                    cfg.conv_kernel[i],
                    cfg.conv_stride[i],
                    cfg.conv_bias,
                    i == 0,
                )
                for i in range(len(cfg.conv_dim))
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None]  # (B, 1, S)
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (B, 512, T50)


class _FeatureProjection(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.layer_norm = LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class _PosConv(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.conv = nn.Conv1d(
            cfg.hidden_size,
            cfg.hidden_size,
            k,
            padding=k // 2,
            groups=cfg.num_conv_pos_embedding_groups,
        )
        self.drop_last = k % 2 == 0  # an even kernel yields one extra frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))  # (B, C, T[+1])
        if self.drop_last:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.heads
        q, k, v = (
            p(x).reshape(b, t, h, c // h).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, h, T, C/h)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        return self.out_proj(out)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, inner)
        self.output_dense = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _EncoderLayer(nn.Module):
    """Post-LN layer (wav2vec2-base, do_stable_layer_norm=False)."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attention = _SelfAttention(d, cfg.num_attention_heads)
        self.layer_norm = LayerNorm(d, eps=eps)
        self.feed_forward = _FeedForward(d, cfg.intermediate_size)
        self.final_layer_norm = LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.pos_conv_embed = _PosConv(cfg)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList([_EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.pos_conv_embed(x))
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return torch.stack(outs, dim=2)  # (B, T, layers, C)


class Wav2Vec2(nn.Module):
    """Normalised 16 kHz audio (B, S) -> per-video-frame features (B, seq_len, layers, C).

    ``seq_len`` = ceil(S / 16000 * fps) in the official code (see ``hallo2rt.runtime.audio``;
    the waveform is normalised there, per 60 s segment, before it reaches this module). The conv
    features (~50 Hz) are linearly interpolated (align_corners=True) to ``seq_len`` frames before
    the feature projection, so the transformer runs at the video rate.
    """

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.feature_extractor = _FeatureExtractor(cfg)
        self.feature_projection = _FeatureProjection(cfg)
        self.encoder = _Encoder(cfg)

    def forward(self, waveform: torch.Tensor, seq_len: int) -> torch.Tensor:
        feats = self.feature_extractor(waveform)  # (B, 512, T50)
        feats = F.interpolate(feats, size=seq_len, mode="linear", align_corners=True)
        return self.encoder(self.feature_projection(feats.transpose(1, 2)))
