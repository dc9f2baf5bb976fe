"""Parity numbers between an engine's outputs and a reference (docs/style.md §3; the policy in
docs/architecture.md).

fp32 against fp32: max |diff| <= tol * max |ref| per output (the spec may loosen an output and
says why). Anything in fp16: cosine >= 0.999 per output, computed in float64 (over millions of
elements a float32 cosine rounds past 1). Export and build both report through here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .errors import Hallo2rtError
from .spec import EngineSpec

FP32_REL_TOL = 1e-4  # docs/architecture.md: max |diff| <= 1e-4 * max |ref| per output
FP16_MIN_COSINE = 0.999  # docs/architecture.md: fp16 vs fp32, cosine per output


class ParityError(Hallo2rtError, RuntimeError):
    """An engine disagrees with its reference beyond the threshold; the message names outputs."""


def _compare(spec: EngineSpec, got, want, what: str, measure, gate: str) -> dict:
    """Per output: shapes must agree, then ``measure(name, g, w) -> (numbers, problem or "")``
    on float64 copies; ``ParityError`` listing every failing output."""
    numbers, bad = {}, []
    for t, g, w in zip(spec.outputs, got, want, strict=True):
        g, w = g.detach().double().cpu(), w.detach().double().cpu()
        if g.shape != w.shape:
            bad.append(f"{t.name} (shape {tuple(g.shape)} vs {tuple(w.shape)})")
            continue
        numbers[t.name], problem = measure(t.name, g, w)
        if problem:
            bad.append(f"{t.name} ({problem})")
    if bad:
        raise ParityError(f"{spec.name}: {what}{gate}: " + "; ".join(bad))
    return numbers


def compare_fp32(
    spec: EngineSpec,
    got: Sequence[torch.Tensor],
    want: Sequence[torch.Tensor],
    what: str,
    rel_tol: float = FP32_REL_TOL,
) -> dict[str, dict[str, float]]:
    """Per-output max |diff|, max |ref| and their ratio; ``ParityError`` beyond the tolerance."""

    def measure(name: str, g: torch.Tensor, w: torch.Tensor):
        err, ref = float((g - w).abs().max()), float(w.abs().max())
        tol = spec.tolerance(name, rel_tol)
        numbers = {"max_abs_diff": err, "max_abs_ref": ref, "rel": err / max(ref, 1e-12)}
        ok = err <= tol * max(ref, 1e-12)  # False for NaN too
        problem = "" if ok else f"max |diff| {err:.3g} vs max |ref| {ref:.3g}, tol {tol:g}"
        return {**numbers, "rel_tol": tol}, problem

    return _compare(spec, got, want, what, measure, " beyond the tolerance x max|ref|")


def compare_fp16(
    spec: EngineSpec,
    got: Sequence[torch.Tensor],
    want: Sequence[torch.Tensor],
    what: str,
    min_cosine: float = FP16_MIN_COSINE,
) -> dict[str, dict[str, float]]:
    """Per-output cosine (and max relative error, for information); ``ParityError`` below
    ``min_cosine``."""

    def measure(name: str, g: torch.Tensor, w: torch.Tensor):
        g, w = g.flatten(), w.flatten()
        cos = float(F.cosine_similarity(g, w, dim=0))
        rel = float((g - w).abs().max() / w.abs().max().clamp(min=1e-12))
        problem = "" if cos >= min_cosine else f"cosine {cos:.5f}"
        return {"cosine": cos, "rel": rel, "min_cosine": min_cosine}, problem

    return _compare(spec, got, want, what, measure, f", cosine below {min_cosine}")
