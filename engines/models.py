"""The callables one generation needs, whatever runs them.

The pipeline (``hallo2rt.runtime.pipeline``) talks only to a ``Models``; today the PyTorch modules
provide it (``engines.torch_models``), and compiled engines will provide the same callables.
Every callable takes and returns tensors on ``device``; shapes are in the field comments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Models:
    """Per-component callables plus the facts the pipeline needs about them."""

    audio_encode: Callable[
        [Tensor, int], Tensor
    ]  # (1, S) normalised 16 kHz, frames -> (1, n, layers, C)
    audio_proj: Callable[[Tensor], Tensor]  # (1, F, 5, layers, C) -> (1, F, T, Ca)
    image_proj: Callable[[Tensor], Tensor]  # (N, E) raw face embedding -> (N, Ti, Ci)
    face_locator: Callable[[Tensor], Tensor]  # (1, 3, S, S) face region in 0/1 -> (1, C0, S/8, S/8)
    vae_encode: Callable[[Tensor], Tensor]  # (N, 3, S, S) in [-1, 1] -> (N, 4, S/8, S/8)
    vae_decode: Callable[[Tensor], Tensor]  # (N, 4, S/8, S/8) -> (N, 3, S, S) in ~[-1, 1]
    reference: Callable[[Tensor, Tensor, Tensor], Sequence[Tensor]]  # ReferenceNet bank
    reference_kv: Callable[[Sequence[Tensor]], list[tuple[Tensor, Tensor]]]  # bank -> K, V
    denoise: Callable[..., Tensor]  # the Denoiser's forward (both CFG halves)
    device: torch.device  # where inputs must live
    dtype: torch.dtype  # dtype of the image/latent path (the audio encoder stays fp32)
    embedding_dim: int  # face embedding width (512)
