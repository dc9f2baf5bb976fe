"""The reference-bank contract between the ReferenceNet and the denoiser (docs/model.md §1.9).

Shared by the graphs (``export``) and the runtime that feeds them, so it lives here.
"""

from __future__ import annotations

import torch


def reference_tokens_official(tokens: torch.Tensor, copies: int = 3) -> torch.Tensor:
    """The official ReferenceNet token tiling.

    tokens (2, T, C) = [uncond, cond]; the batch is [r, m1, m2, r, m1, m2] and the tokens are
    ``tokens.repeat(3, 1, 1)`` = [u, c, u, c, u, c], so the motion frames are cross-assigned.
    """
    return tokens.repeat(copies, 1, 1)


def split_reference_bank(entry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official bank entry (2S, L, C), rows [r, m1.., r, m1..] -> ref (2, L, C), motion
    (2, S-1, L, C).

    ref[0] is the reference computed with uncond tokens, ref[1] with cond tokens; motion[b] are the
    motion frames of CFG half b (the official ``bank[:, 0]`` and ``bank[:, 1:]``).
    """
    per_half = entry.reshape(2, entry.shape[0] // 2, *entry.shape[1:])  # (2, S, L, C)
    return per_half[:, 0], per_half[:, 1:]


def reference_token_rows(motion_frames: int = 2) -> tuple[list[int], list[int]]:
    """Which CFG token (0 = uncond, 1 = cond) each ReferenceNet row gets under the official
    tiling, split into the two reference rows and the 2 x M motion rows.

    Official batch: per half b, [r, m1..mM]; row i reads token i % 2. Rows are independent in the
    ReferenceNet, so the reference rows (constant per video) can run once and only the motion
    rows per clip (docs/model.md §6.3): M = 2 gives ref [u, c] and motion [c, u, u, c].
    """
    per_half = motion_frames + 1
    ref = [(b * per_half) % 2 for b in (0, 1)]
    motion = [(b * per_half + j) % 2 for b in (0, 1) for j in range(1, per_half)]
    return ref, motion


# --- the names of denoiser_step's inputs: one place for the graphs, the spec and the runtime ---

LOOP_INPUTS = ("latents", "timestep", "coef", "cfg_scale")  # what the step loop supplies
MASK_KINDS = ("full", "face", "lip")  # background/pose, face, lip audio branches (§1.11)
AUDIO_BRANCHES = 3  # attn2_0/1/2 of each audio module, in MASK_KINDS order


def image_kv_names(block: int) -> tuple[str, str]:
    """Keys and values of hooked block ``block``'s image cross-attention (from image_proj)."""
    return f"image_k_{block}", f"image_v_{block}"


def audio_kv_names(block: int, branch: int) -> tuple[str, str]:
    """Keys and values of audio branch ``branch`` of hooked block ``block`` (from audio_proj)."""
    return f"audio_k_{block}_{branch}", f"audio_v_{block}_{branch}"


def reference_kv_names(block: int) -> tuple[str, str]:
    """The reference keys and values of hooked block ``block`` (from reference_unet)."""
    return f"ref_k_{block}", f"ref_v_{block}"


def reference_feature_name(block: int) -> str:
    """The motion-frame features of hooked block ``block`` as reference_unet outputs them."""
    return f"feature_{block}"


def motion_name(block: int) -> str:
    """The motion-frame features of hooked block ``block`` (reference_unet's ``feature_i``)."""
    return f"motion_{block}"


def mask_name(kind: str, level: int) -> str:
    """Mask ``kind`` (one of MASK_KINDS) at UNet level ``level``."""
    return f"{kind}_mask_{level}"


def denoiser_input_names(blocks: int, levels: int) -> tuple[str, ...]:
    """Every input of denoiser_step, in graph order: the loop's, the image and audio K/V per
    block, the face feature, the reference K/V per block, the motion features per block, the
    masks per kind and level, motion_scale."""
    names = list(LOOP_INPUTS)
    names += [n for i in range(blocks) for n in image_kv_names(i)]
    names += [n for i in range(blocks) for b in range(AUDIO_BRANCHES) for n in audio_kv_names(i, b)]
    names.append("face_feature")
    names += [n for i in range(blocks) for n in reference_kv_names(i)]
    names += [motion_name(i) for i in range(blocks)]
    names += [mask_name(k, lv) for k in MASK_KINDS for lv in range(levels)]
    names.append("motion_scale")
    return tuple(names)
