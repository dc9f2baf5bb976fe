"""``Models`` backed by the PyTorch modules of ``hallo2rt.export`` (imported lazily, DESIGN.md:
the torch backend is the one place ``engines`` may reach into ``export``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .models import Models

log = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was requested but torch sees no CUDA GPU here; use "
            "--device cpu or install a CUDA build of torch"
        )
    return dev


def load_torch_models(
    checkpoints: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> Models:
    """Load the generation components from an official ``pretrained_models/`` tree."""
    from hallo2rt.export.checkpoints import GENERATION, load_pretrained

    dev = _device(device)
    if dtype == torch.float16 and dev.type == "cpu":
        raise RuntimeError(
            "--dtype fp16 needs a GPU (CPU fp16 convolutions are ~1000x slower); "
            "use --dtype fp32 on the CPU"
        )
    loaded = load_pretrained(checkpoints, GENERATION)
    mods = {}
    for name, module in loaded.modules.items():
        # the official pipeline keeps wav2vec in fp32 and casts everything else
        mods[name] = module.to(dev, torch.float32 if name == "audio_encoder" else dtype)
    log.info("loaded %d components from %s on %s (%s)", len(mods), checkpoints, dev, dtype)

    def run(name, method="__call__"):
        fn = getattr(mods[name], method)

        def call(*args):
            with torch.inference_mode():
                return fn(*args)

        return call

    return Models(
        audio_encode=run("audio_encoder"),
        audio_proj=run("audio_proj"),
        image_proj=run("image_proj"),
        face_locator=run("face_locator"),
        vae_encode=run("vae_encoder"),
        vae_decode=run("vae_decoder"),
        reference=run("reference_unet"),
        reference_kv=run("denoiser", "reference_kv"),
        denoise=run("denoiser"),
        device=dev,
        dtype=dtype,
        embedding_dim=loaded.config.heads.image_embed_dim,
    )
