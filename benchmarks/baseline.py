"""The official clip loop, written out step by step with our faithful modules
(docs/model.md §1.5-1.8).

It is the baseline of ``hallo2rt bench --baseline official`` and the reference the pipeline test
compares against, so one implementation serves both. It keeps the official structure and its
waste: the ReferenceNet on all 6 rows every clip (reference + motion frames, both CFG halves),
the reference K/V projected again at every step, the motion frames re-encoded from a CPU round
trip in [0, 1], one global CPU generator (mask, then fp16 noise), CFG and the DDIM update as
separate eager ops, and the VAE decoding one frame at a time with a host copy per clip.

What it does not reproduce (so the baseline is, if anything, faster than the official code):
the overwritten uncond concat-attention (our denoiser never computes it), the dead 8x8 motion
modules, the 16-frame face-locator input and the per-step host syncs of the official scheduler.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..engines.bank import reference_tokens_official, split_reference_bank
from ..runtime.audio import audio_windows
from ..runtime.pipeline import RunConfig
from ..runtime.portrait import Portrait
from ..runtime.sampler import cfg_combine, ddim_schedule


def official_clips(
    modules: dict[str, torch.nn.Module],
    portrait: Portrait,
    features: torch.Tensor,
    cfg: RunConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Iterator[np.ndarray]:
    """Yield each clip's frames (F, S, S, 3) uint8, computed the official way.

    modules: ``denoiser``, ``reference_unet``, ``vae_encoder``, ``vae_decoder``, ``image_proj``,
    ``face_locator``, ``audio_proj`` (already on ``device`` in ``dtype``). features: (N, layers,
    C); the official ``N // F`` clips are made. Uses the global CPU generator seeded with
    ``cfg.seed`` (``torch.manual_seed``), as the official script.
    """
    den, ref_net = modules["denoiser"], modules["reference_unet"]
    vae_e, vae_d = modules["vae_encoder"], modules["vae_decoder"]
    dev, f, m = torch.device(device), cfg.frames, cfg.motion_frames
    size = portrait.pixels.shape[-1]
    gen = torch.manual_seed(cfg.seed)
    with torch.inference_mode():
        emb = portrait.embedding.to(dev, dtype)
        proj = modules["image_proj"]
        tokens = torch.cat([proj(torch.zeros_like(emb)), proj(emb)])
        face = modules["face_locator"](portrait.face_region.to(dev, dtype))
        face = torch.cat([torch.zeros_like(face), face])[:, :, None]
        windows = audio_windows(features)
        sched = ddim_schedule(cfg.steps)
        scale = torch.tensor([cfg.pose_weight, cfg.face_weight, cfg.lip_weight], device=dev)
        scale = scale.to(dtype)
        masks = [
            [x.to(dev, dtype) for x in ms]
            for ms in (portrait.full_masks, portrait.face_masks, portrait.lip_masks)
        ]
        pixels = portrait.pixels
        motion01 = (pixels / 2 + 0.5).expand(m, -1, -1, -1)  # clip 0: the portrait
        keep_face = portrait.face_region[0, 0].bool()
        for t in range(windows.shape[0] // f):
            rand = torch.rand(size, size, generator=gen)
            noise = torch.randn((1, 4, f, size // 8, size // 8), generator=gen, dtype=torch.float16)
            keep = (rand > cfg.mask_rate) | keep_face
            ref_img = torch.cat([pixels, (motion01 * 2 - 1) * keep]).to(dev, dtype)
            latents = vae_e(ref_img)  # the reference is re-encoded every clip
            bank = ref_net(
                latents.repeat(2, 1, 1, 1),
                torch.zeros((), dtype=torch.int64, device=dev),
                reference_tokens_official(tokens),
            )
            refs, mots = zip(*(split_reference_bank(b) for b in bank), strict=True)
            audio = modules["audio_proj"](windows[f * t : f * t + f][None].to(dev, dtype))
            audio = torch.cat([torch.zeros_like(audio), audio])
            x = noise.to(dev, dtype)
            for i, ts in enumerate(sched.timesteps):
                v = den(
                    torch.cat([x, x]),
                    ts.to(dev),
                    tokens,
                    audio,
                    face,
                    den.reference_kv(refs),  # projected again at every step
                    mots,
                    *masks,
                    scale,
                )
                v = cfg_combine(v, cfg.cfg_scale)
                x = (float(sched.a[i]) * x + float(sched.b[i]) * v).to(dtype)
            frames = torch.cat([vae_d(x[0, :, j][None]) for j in range(f)])  # one at a time
            unit = (frames.float() / 2 + 0.5).clamp(0, 1).cpu()  # host round trip per clip
            motion01 = unit[-m:]
            yield (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
