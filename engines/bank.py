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
