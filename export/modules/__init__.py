"""Inference-only PyTorch modules of every Hallo2 component (parameter names = checkpoint keys).

``build_module(name, cfg)`` constructs one component from a ``ModelConfig``; use it under
``torch.device("meta")`` to build without allocating weights (the loader then assigns them).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ...engines.bank import reference_tokens_official, split_reference_bank
from ..config import ModelConfig
from .codeformer import CodeFormer
from .facelib import ParseNet, RetinaFace
from .heads import AudioProj, FaceLocator, ImageProj
from .rrdbnet import RRDBNet
from .unet import Denoiser, ReferenceNet
from .vae import VAEDecoder, VAEEncoder
from .wav2vec2 import Wav2Vec2


def _needs(value, what: str):
    if value is None:
        raise ValueError(f"ModelConfig.{what} is None: load the checkpoint that defines it")
    return value


BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "vae_encoder": lambda c: VAEEncoder(c.vae),
    "vae_decoder": lambda c: VAEDecoder(c.vae),
    "reference_unet": lambda c: ReferenceNet(c.unet),
    "denoiser": lambda c: Denoiser(c.unet, c.motion),
    "face_locator": lambda c: FaceLocator(c.heads),
    "image_proj": lambda c: ImageProj(c.heads),
    "audio_proj": lambda c: AudioProj(c.heads),
    "audio_encoder": lambda c: Wav2Vec2(c.wav2vec),
    "face_restorer": lambda c: CodeFormer(_needs(c.codeformer, "codeformer")),
    "bg_upsampler": lambda c: RRDBNet(_needs(c.rrdb, "rrdb")),
    "face_detector": lambda c: RetinaFace(_needs(c.retinaface, "retinaface")),
    "face_parser": lambda c: ParseNet(_needs(c.parsenet, "parsenet")),
}

COMPONENTS: tuple[str, ...] = tuple(BUILDERS)


def build_module(name: str, cfg: ModelConfig) -> nn.Module:
    """Construct component ``name`` (one of ``COMPONENTS``) in eval mode."""
    if name not in BUILDERS:
        raise KeyError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
    return BUILDERS[name](cfg).eval()


__all__ = [
    "AudioProj",
    "CodeFormer",
    "COMPONENTS",
    "Denoiser",
    "FaceLocator",
    "ImageProj",
    "ParseNet",
    "RRDBNet",
    "RetinaFace",
    "ReferenceNet",
    "VAEDecoder",
    "VAEEncoder",
    "Wav2Vec2",
    "build_module",
    "reference_tokens_official",
    "split_reference_bank",
]
