"""Architecture configs of every Hallo2 component, read from the files of the official layout.

docs/style.md §7: frozen dataclasses, one comment per field, checks in ``__post_init__`` that name
the field and the value. Nothing here reads files: ``checkpoints.py`` reads them and calls the
``from_*`` constructors, so a notebook can build any config by hand.

Where the official code fixes a dimension in Python rather than in a config file (the Hallo2
heads, the motion modules, CodeFormer, RealESRGAN), the loader reads it back from the tensor
shapes of the checkpoint that holds the weights (``*.from_state_dict``), so a smaller model in the
same layout loads the same way. Values that no shape reveals (head counts) keep the official
default and are named as such.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engines.errors import Hallo2rtError


class ConfigError(Hallo2rtError, ValueError):
    """A config value is invalid or unsupported; the message names the field and the value."""


def _check(ok: bool, cls: str, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{cls}.{name} = {value!r}: {why}")


def _shape(sd: Mapping[str, Any], key: str, what: str) -> tuple[int, ...]:
    """Shape of ``sd[key]``; a missing key is reported as a checkpoint of the wrong kind."""
    if key not in sd:
        raise ConfigError(f"cannot infer {what}: tensor {key!r} is missing from the checkpoint")
    return tuple(sd[key].shape)


@dataclass(frozen=True)
class UNetConfig:
    """SD1.5-layout UNet (``stable-diffusion-v1-5/unet/config.json``); shared by both UNets."""

    in_channels: int = 4  # latent channels in
    out_channels: int = 4  # latent channels out (denoiser only; the ReferenceNet has no head)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # width per resolution level
    layers_per_block: int = 2  # resnets (+ attentions) per down block; up blocks have one more
    attention_head_dim: int = 8  # diffusers' misnomer: the NUMBER of heads (width = C / 8)
    cross_attention_dim: int = 768  # width of the image tokens the spatial cross-attention reads
    norm_num_groups: int = 32  # GroupNorm groups in resnets and transformers
    norm_eps: float = 1e-5  # GroupNorm eps in resnets and the output norm
    flip_sin_to_cos: bool = True  # sinusoidal timestep embedding emits [cos, sin]
    freq_shift: int = 0  # downscale_freq_shift of the timestep embedding
    downsample_padding: int = 1  # padding of the stride-2 downsampling convs
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )  # which down blocks carry attention
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )  # which up blocks carry attention

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        c = "UNetConfig"
        _check(n >= 2, c, "block_out_channels", self.block_out_channels, "need >= 2 levels")
        for ch in self.block_out_channels:
            _check(
                ch % self.norm_num_groups == 0,
                c,
                "block_out_channels",
                ch,
                f"not divisible by norm_num_groups={self.norm_num_groups}",
            )
            _check(
                ch % self.attention_head_dim == 0,
                c,
                "block_out_channels",
                ch,
                f"not divisible by the head count attention_head_dim={self.attention_head_dim}",
            )
        _check(
            len(self.down_block_types) == n,
            c,
            "down_block_types",
            self.down_block_types,
            f"need one per level ({n})",
        )
        _check(
            len(self.up_block_types) == n,
            c,
            "up_block_types",
            self.up_block_types,
            f"need one per level ({n})",
        )
        for t in self.down_block_types:
            _check(
                t in ("CrossAttnDownBlock2D", "DownBlock2D"),
                c,
                "down_block_types",
                t,
                "unsupported block type",
            )
        for t in self.up_block_types:
            _check(
                t in ("CrossAttnUpBlock2D", "UpBlock2D"),
                c,
                "up_block_types",
                t,
                "unsupported block type",
            )
        _check(self.layers_per_block >= 1, c, "layers_per_block", self.layers_per_block, ">= 1")

    @property
    def down_has_attn(self) -> tuple[bool, ...]:
        return tuple(t.startswith("CrossAttn") for t in self.down_block_types)

    @property
    def up_has_attn(self) -> tuple[bool, ...]:
        return tuple(t.startswith("CrossAttn") for t in self.up_block_types)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @classmethod
    def from_json(cls, cfg: Mapping[str, Any]) -> UNetConfig:
        """From a diffusers ``UNet2DConditionModel`` config.json; refuses settings we do not run."""
        unsupported = {
            "use_linear_projection": False,
            "class_embed_type": None,
            "only_cross_attention": False,
            "upcast_attention": False,
            "dual_cross_attention": False,
            "resnet_time_scale_shift": "default",
            "center_input_sample": False,
            "mid_block_scale_factor": 1,
            "act_fn": "silu",
        }
        for key, want in unsupported.items():
            if key in cfg and cfg[key] != want:
                raise ConfigError(
                    f"unet config.json: {key} = {cfg[key]!r} is not supported "
                    f"(Hallo2 uses {want!r})"
                )
        heads = cfg.get("attention_head_dim", 8)
        if isinstance(heads, list | tuple):
            if len(set(heads)) != 1:
                raise ConfigError(
                    f"unet config.json: attention_head_dim = {heads!r}: per-level "
                    "head counts are not supported"
                )
            heads = heads[0]
        return cls(
            in_channels=int(cfg.get("in_channels", 4)),
            out_channels=int(cfg.get("out_channels", 4)),
            block_out_channels=tuple(int(x) for x in cfg["block_out_channels"]),
            layers_per_block=int(cfg.get("layers_per_block", 2)),
            attention_head_dim=int(heads),
            cross_attention_dim=int(cfg.get("cross_attention_dim", 768)),
            norm_num_groups=int(cfg.get("norm_num_groups", 32)),
            norm_eps=float(cfg.get("norm_eps", 1e-5)),
            flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
            freq_shift=int(cfg.get("freq_shift", 0)),
            downsample_padding=int(cfg.get("downsample_padding", 1)),
            down_block_types=tuple(cfg["down_block_types"]),
            up_block_types=tuple(cfg["up_block_types"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "_class_name": "UNet2DConditionModel",
            "act_fn": "silu",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "attention_head_dim": self.attention_head_dim,
            "cross_attention_dim": self.cross_attention_dim,
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "downsample_padding": self.downsample_padding,
            "center_input_sample": False,
            "mid_block_scale_factor": 1,
            "down_block_types": list(self.down_block_types),
            "up_block_types": list(self.up_block_types),
        }


@dataclass(frozen=True)
class MotionConfig:
    """Hallo2 additions to the denoiser (official ``unet_additional_kwargs`` and net.pth shapes)."""

    audio_attention_dim: int = 768  # width of the audio tokens (read from attn2_0.to_k in net.pth)
    motion_heads: int = (
        8  # temporal attention heads (official motion_module_kwargs; no shape shows it)
    )
    motion_pe_max_len: int = 32  # rows of each pos_encoder.pe table (read from net.pth)
    motion_norm_groups: int = 32  # GroupNorm groups of the motion modules (AnimateDiff default)

    def __post_init__(self) -> None:
        c = "MotionConfig"
        for name in (
            "audio_attention_dim",
            "motion_heads",
            "motion_pe_max_len",
            "motion_norm_groups",
        ):
            _check(getattr(self, name) > 0, c, name, getattr(self, name), "must be > 0")


@dataclass(frozen=True)
class HeadsConfig:
    """FaceLocator, ImageProjModel and AudioProjModel (official kwargs; net.pth shapes)."""

    face_locator_channels: tuple[int, ...] = (16, 32, 64, 128)  # FaceLocator block widths
    face_locator_out: int = 320  # conditioning channels (= the denoiser's first width)
    image_embed_dim: int = 512  # ArcFace embedding width
    image_tokens: int = 4  # clip_extra_context_tokens
    audio_window: int = 5  # frames per audio window (i-2 .. i+2)
    audio_blocks: int = 12  # wav2vec layers stacked per frame
    audio_channels: int = 768  # wav2vec hidden width
    audio_intermediate: int = 512  # hidden width of the AudioProj MLP
    audio_tokens: int = 32  # audio context tokens per frame
    token_dim: int = 768  # width of image and audio tokens (cross_attention / audio_attention dim)

    def __post_init__(self) -> None:
        for name in (
            "face_locator_out",
            "image_embed_dim",
            "image_tokens",
            "audio_window",
            "audio_blocks",
            "audio_channels",
            "audio_intermediate",
            "audio_tokens",
            "token_dim",
        ):
            _check(getattr(self, name) > 0, "HeadsConfig", name, getattr(self, name), "> 0")

    @classmethod
    def from_state_dict(
        cls,
        sd: Mapping[str, Any],
        audio_blocks: int | None = None,
        audio_channels: int | None = None,
    ) -> HeadsConfig:
        """Read the head dims from net.pth tensors (``face_locator.``/``imageproj.``/
        ``audioproj.`` keys). The audio window needs the wav2vec depth and width; without them
        the audio fields keep their defaults (for runs that do not build the AudioProj)."""
        n_blocks = sum(
            1 for k in sd if k.startswith("face_locator.blocks.") and k.endswith(".weight")
        )  # pairs of (same-width, stride-2) convs
        fl = [
            _shape(sd, f"face_locator.blocks.{i}.weight", "face locator widths")[0]
            for i in range(1, n_blocks, 2)
        ]
        conv_in = _shape(sd, "face_locator.conv_in.weight", "face locator width")[0]
        out = _shape(sd, "face_locator.conv_out.weight", "face locator output")[0]
        proj = _shape(sd, "imageproj.proj.weight", "image projection")
        token_dim = _shape(sd, "imageproj.norm.weight", "token width")[0]
        kw: dict[str, Any] = {}
        if audio_blocks is not None and audio_channels is not None:
            p1 = _shape(sd, "audioproj.proj1.weight", "audio projection")
            p3 = _shape(sd, "audioproj.proj3.weight", "audio projection")
            window, rem = divmod(p1[1], audio_blocks * audio_channels)
            if rem:
                raise ConfigError(
                    f"audioproj.proj1.weight has {p1[1]} inputs, not a multiple of wav2vec layers "
                    f"x width = {audio_blocks} x {audio_channels}: net.pth and the wav2vec "
                    "config.json do not belong together"
                )
            kw = dict(
                audio_window=window,
                audio_blocks=audio_blocks,
                audio_channels=audio_channels,
                audio_intermediate=p1[0],
                audio_tokens=p3[0] // token_dim,
            )
        return cls(
            face_locator_channels=(conv_in, *fl),
            face_locator_out=out,
            image_embed_dim=proj[1],
            image_tokens=proj[0] // token_dim,
            token_dim=token_dim,
            **kw,
        )


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL (``sd-vae-ft-mse/config.json``)."""

    in_channels: int = 3  # image channels
    out_channels: int = 3  # decoded image channels
    latent_channels: int = 4  # latent channels (the encoder emits 2x: mean and logvar)
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # width per level
    layers_per_block: int = 2  # encoder resnets per level; the decoder has one more
    norm_num_groups: int = 32  # GroupNorm groups (eps 1e-6 throughout)
    scaling_factor: float = 0.18215  # latent scale, hard-coded by the Hallo2 pipeline

    def __post_init__(self) -> None:
        for ch in self.block_out_channels:
            _check(
                ch % self.norm_num_groups == 0,
                "VAEConfig",
                "block_out_channels",
                ch,
                f"not divisible by norm_num_groups={self.norm_num_groups}",
            )
        _check(self.scaling_factor > 0, "VAEConfig", "scaling_factor", self.scaling_factor, "> 0")

    @classmethod
    def from_json(cls, cfg: Mapping[str, Any]) -> VAEConfig:
        for t in cfg.get("down_block_types", []):
            if t != "DownEncoderBlock2D":
                raise ConfigError(f"vae config.json: down block {t!r} is not supported")
        for t in cfg.get("up_block_types", []):
            if t != "UpDecoderBlock2D":
                raise ConfigError(f"vae config.json: up block {t!r} is not supported")
        return cls(
            in_channels=int(cfg.get("in_channels", 3)),
            out_channels=int(cfg.get("out_channels", 3)),
            latent_channels=int(cfg.get("latent_channels", 4)),
            block_out_channels=tuple(int(x) for x in cfg["block_out_channels"]),
            layers_per_block=int(cfg.get("layers_per_block", 2)),
            norm_num_groups=int(cfg.get("norm_num_groups", 32)),
            # sd-vae-ft-mse's config has no scaling_factor; Hallo2 hard-codes 0.18215 anyway.
            scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
        )

    def to_json(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "act_fn": "silu",
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": 256,
        }


@dataclass(frozen=True)
class Wav2Vec2Config:
    """wav2vec2 base (``wav2vec/wav2vec2-base-960h/config.json``), as Hallo2 uses it."""

    conv_dim: tuple[int, ...] = (512,) * 7  # feature-encoder conv widths
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)  # feature-encoder kernels
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # feature-encoder strides (total 320)
    conv_bias: bool = False  # feature-encoder convs have a bias
    hidden_size: int = 768  # transformer width
    num_hidden_layers: int = 12  # transformer layers (all of them are returned)
    num_attention_heads: int = 12  # transformer heads
    intermediate_size: int = 3072  # FF width
    num_conv_pos_embeddings: int = 128  # positional conv kernel
    num_conv_pos_embedding_groups: int = 16  # positional conv groups
    layer_norm_eps: float = 1e-5  # LayerNorm / GroupNorm eps
    sampling_rate: int = 16000  # Hz expected by the feature extractor

    def __post_init__(self) -> None:
        c = "Wav2Vec2Config"
        n = len(self.conv_dim)
        _check(len(self.conv_kernel) == n, c, "conv_kernel", self.conv_kernel, "one per conv")
        _check(len(self.conv_stride) == n, c, "conv_stride", self.conv_stride, "one per conv")
        _check(
            self.hidden_size % self.num_attention_heads == 0,
            c,
            "hidden_size",
            self.hidden_size,
            f"not divisible by {self.num_attention_heads} heads",
        )
        _check(
            self.hidden_size % self.num_conv_pos_embedding_groups == 0,
            c,
            "num_conv_pos_embedding_groups",
            self.num_conv_pos_embedding_groups,
            "must divide hidden_size",
        )

    @classmethod
    def from_json(cls, cfg: Mapping[str, Any]) -> Wav2Vec2Config:
        fixed = {
            "feat_extract_norm": "group",
            "do_stable_layer_norm": False,
            "hidden_act": "gelu",
            "feat_extract_activation": "gelu",
        }
        for key, want in fixed.items():
            if key in cfg and cfg[key] != want:
                raise ConfigError(
                    f"wav2vec2 config.json: {key} = {cfg[key]!r} is not supported "
                    f"(wav2vec2-base uses {want!r})"
                )
        return cls(
            conv_dim=tuple(int(x) for x in cfg["conv_dim"]),
            conv_kernel=tuple(int(x) for x in cfg["conv_kernel"]),
            conv_stride=tuple(int(x) for x in cfg["conv_stride"]),
            conv_bias=bool(cfg.get("conv_bias", False)),
            hidden_size=int(cfg["hidden_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_conv_pos_embeddings=int(cfg["num_conv_pos_embeddings"]),
            num_conv_pos_embedding_groups=int(cfg["num_conv_pos_embedding_groups"]),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "architectures": ["Wav2Vec2ForCTC"],
            "model_type": "wav2vec2",
            "conv_dim": list(self.conv_dim),
            "conv_kernel": list(self.conv_kernel),
            "conv_stride": list(self.conv_stride),
            "conv_bias": self.conv_bias,
            "feat_extract_norm": "group",
            "feat_extract_activation": "gelu",
            "do_stable_layer_norm": False,
            "hidden_act": "gelu",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "num_conv_pos_embeddings": self.num_conv_pos_embeddings,
            "num_conv_pos_embedding_groups": self.num_conv_pos_embedding_groups,
            "num_feat_extract_layers": len(self.conv_dim),
            "layer_norm_eps": self.layer_norm_eps,
            "vocab_size": 32,
        }


@dataclass(frozen=True)
class CodeFormerConfig:
    """Temporal CodeFormer (``hallo2/net_g.pth``; the official code fixes these in Python)."""

    nf: int = 64  # base width of the VQGAN encoder/generator
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)  # width multipliers per level (5 downsamples)
    emb_dim: int = 256  # codebook vector width (lq_feat channels)
    codebook_size: int = 1024  # codebook entries
    dim_embd: int = 512  # transformer width
    latent_size: int = 256  # tokens per frame (16 x 16)
    n_layers: int = 9  # transformer layers
    n_head: int = 8  # attention heads (official constant; no shape shows it)
    connect_list: tuple[str, ...] = ("32", "64", "128", "256")  # resolutions fused by SFT
    img_size: int = 512  # input face crop size
    res_blocks: int = 2  # resnets per level
    attn_resolution: int = 16  # resolution with self-attention blocks

    def __post_init__(self) -> None:
        c = "CodeFormerConfig"
        _check(self.dim_embd % self.n_head == 0, c, "n_head", self.n_head, "must divide dim_embd")
        side = self.img_size // 2 ** (len(self.ch_mult) - 1)
        _check(
            side * side == self.latent_size,
            c,
            "latent_size",
            self.latent_size,
            f"must equal ({self.img_size} / 2^{len(self.ch_mult) - 1})^2 = {side * side}",
        )
        _check(
            side == self.attn_resolution,
            c,
            "attn_resolution",
            self.attn_resolution,
            f"attention sits at the bottom level ({side})",
        )
        for size in self.connect_list:
            _check(
                size in self.channels and int(size) > self.attn_resolution,
                c,
                "connect_list",
                self.connect_list,
                f"fused resolutions must lie between {self.attn_resolution} "
                f"(exclusive) and {self.img_size}",
            )
        for ch in (self.nf * m for m in self.ch_mult):
            _check(
                ch % 32 == 0, c, "nf", self.nf, f"width {ch} not divisible by 32 GroupNorm groups"
            )

    @property
    def channels(self) -> dict[str, int]:
        """Width at each resolution (as strings, like the official dict keys)."""
        out = {}
        for i, m in enumerate(self.ch_mult):
            out[str(self.img_size >> i)] = self.nf * m
        return out

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> CodeFormerConfig:
        """Infer widths from net_g.pth: encoder block i of level l sits at 1 + 3*l (see vqgan)."""
        nf = _shape(sd, "encoder.blocks.0.weight", "CodeFormer width")[0]
        levels = 1 + sum(
            1 for k in sd if k.startswith("encoder.blocks.") and k.endswith(".conv.weight")
        )  # one downsample conv between consecutive levels
        mult = []
        for lvl in range(levels):
            key = f"encoder.blocks.{1 + 3 * lvl}.conv1.weight"
            mult.append(_shape(sd, key, "CodeFormer level width")[0] // nf)
        pos = _shape(sd, "position_emb", "CodeFormer tokens")
        code = _shape(sd, "quantize.embedding.weight", "CodeFormer codebook")
        n_layers = sum(1 for k in sd if k.startswith("ft_layers.") and k.endswith(".norm1.weight"))
        connect = sorted({k.split(".")[1] for k in sd if k.startswith("fuse_convs_dict.")}, key=int)
        side = round(pos[0] ** 0.5)  # tokens per frame are the bottom level's side squared
        return cls(
            img_size=side << (levels - 1),
            nf=nf,
            ch_mult=tuple(mult),
            emb_dim=code[1],
            codebook_size=code[0],
            dim_embd=pos[1],
            latent_size=pos[0],
            n_layers=n_layers,
            connect_list=tuple(connect),
        )


@dataclass(frozen=True)
class RRDBConfig:
    """RealESRGAN RRDBNet (``realesrgan/RealESRGAN_x2plus.pth``)."""

    scale: int = 2  # output scale; x2 runs on a 2x pixel-unshuffled input (12 channels)
    num_in_ch: int = 3  # image channels
    num_out_ch: int = 3  # image channels out
    num_feat: int = 64  # trunk width
    num_block: int = 23  # RRDB blocks
    num_grow_ch: int = 32  # dense growth channels

    def __post_init__(self) -> None:
        _check(self.scale in (1, 2, 4), "RRDBConfig", "scale", self.scale, "must be 1, 2 or 4")

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> RRDBConfig:
        first = _shape(sd, "conv_first.weight", "RRDBNet input")
        in_ch = first[1]
        scale = {3: 4, 12: 2, 48: 1}.get(in_ch)
        if scale is None:
            raise ConfigError(
                f"conv_first.weight has {in_ch} input channels; expected 3 (x4), "
                "12 (x2) or 48 (x1) for a 3-channel RealESRGAN"
            )
        blocks = sum(1 for k in sd if k.startswith("body.") and k.endswith(".rdb1.conv1.weight"))
        return cls(
            scale=scale,
            num_in_ch=3,
            num_out_ch=_shape(sd, "conv_last.weight", "RRDBNet output")[0],
            num_feat=first[0],
            num_block=blocks,
            num_grow_ch=_shape(sd, "body.0.rdb1.conv1.weight", "RRDB growth")[0],
        )


@dataclass(frozen=True)
class RetinaFaceConfig:
    """RetinaFace-ResNet50 (``facelib/detection_Resnet50_Final.pth``; facexlib fixes these)."""

    width: int = 64  # ResNet stem width (torchvision resnet50: 64)
    layers: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks of layer1..layer4
    out_channels: int = 256  # FPN / SSH width
    anchors: int = 2  # anchors per position (min_sizes per level)
    min_sizes: tuple[tuple[int, int], ...] = ((16, 32), (64, 128), (256, 512))  # anchor sides
    steps: tuple[int, ...] = (8, 16, 32)  # strides of the three levels (layer2..layer4)
    variance: tuple[float, float] = (0.1, 0.2)  # box/landmark decoding variances

    def __post_init__(self) -> None:
        c = "RetinaFaceConfig"
        _check(len(self.layers) == 4, c, "layers", self.layers, "ResNet has 4 stages")
        _check(self.out_channels % 4 == 0, c, "out_channels", self.out_channels, "SSH splits /4")
        _check(
            len(self.min_sizes) == len(self.steps) == 3,
            c,
            "min_sizes",
            self.min_sizes,
            "three pyramid levels, one per step",
        )
        _check(
            all(len(m) == self.anchors for m in self.min_sizes),
            c,
            "anchors",
            self.anchors,
            "must equal the anchor sides per level",
        )

    @property
    def leaky(self) -> float:
        """The official FPN/SSH negative slope: 0.1 for widths <= 64, else plain ReLU."""
        return 0.1 if self.out_channels <= 64 else 0.0

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> RetinaFaceConfig:
        width = _shape(sd, "body.conv1.weight", "RetinaFace stem width")[0]
        layers = tuple(
            sum(1 for k in sd if re.fullmatch(rf"body\.layer{i}\.\d+\.conv1\.weight", k))
            for i in range(1, 5)
        )
        out = _shape(sd, "fpn.output1.0.weight", "RetinaFace FPN width")[0]
        anchors = _shape(sd, "ClassHead.0.conv1x1.weight", "RetinaFace anchors")[0] // 2
        return cls(width=width, layers=layers, out_channels=out, anchors=anchors)


@dataclass(frozen=True)
class ParseNetConfig:
    """ParseNet face parser (``facelib/parsing_parsenet.pth``; facelib builds it in Python)."""

    in_size: int = 512  # input face crop side (init_parsing_model: 512)
    min_feat_size: int = 32  # encoder output side: log2(in_size / this) downsamples
    base_ch: int = 64  # first conv width
    parsing_ch: int = 19  # parsing classes
    res_depth: int = 10  # residual blocks in the body
    ch_range: tuple[int, int] = (32, 256)  # widths are clipped to this range

    def __post_init__(self) -> None:
        c = "ParseNetConfig"
        _check(
            self.in_size % self.min_feat_size == 0
            and (self.in_size // self.min_feat_size) & (self.in_size // self.min_feat_size - 1)
            == 0,
            c,
            "min_feat_size",
            self.min_feat_size,
            f"in_size {self.in_size} / min_feat_size must be a power of two",
        )

    @property
    def steps(self) -> int:
        return (self.in_size // self.min_feat_size).bit_length() - 1

    def clip(self, ch: int) -> int:
        return max(self.ch_range[0], min(ch, self.ch_range[1]))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> ParseNetConfig:
        base = _shape(sd, "encoder.0.conv2d.weight", "ParseNet width")[0]
        steps = sum(1 for k in sd if re.fullmatch(r"encoder\.\d+\.conv1\.conv2d\.weight", k))
        depth = sum(1 for k in sd if re.fullmatch(r"body\.\d+\.conv1\.conv2d\.weight", k))
        top = _shape(sd, "body.0.conv1.conv2d.weight", "ParseNet body width")[0]
        classes = _shape(sd, "out_mask_conv.conv2d.weight", "ParseNet classes")[0]
        # the lower clip never binds when it is <= base_ch, so base_ch reproduces the network
        return cls(
            in_size=cls.min_feat_size << steps,
            base_ch=base,
            parsing_ch=classes,
            res_depth=depth,
            ch_range=(base, top),
        )


@dataclass(frozen=True)
class ModelConfig:
    """Everything the weights need, read from the checkpoint tree (docs/style.md §7)."""

    unet: UNetConfig = field(default_factory=UNetConfig)  # both UNets
    motion: MotionConfig = field(default_factory=MotionConfig)  # denoiser additions
    heads: HeadsConfig = field(default_factory=HeadsConfig)  # face locator, image/audio proj
    vae: VAEConfig = field(default_factory=VAEConfig)  # sd-vae-ft-mse
    wav2vec: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)  # audio encoder
    codeformer: CodeFormerConfig | None = None  # None when net_g.pth was not loaded
    rrdb: RRDBConfig | None = None  # None when RealESRGAN was not loaded
    retinaface: RetinaFaceConfig | None = None  # None when the face detector was not loaded
    parsenet: ParseNetConfig | None = None  # None when the face parser was not loaded
