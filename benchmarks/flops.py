"""FLOPs of the denoiser's step engines, counted on the real graphs (no weights needed).

    python -m hallo2rt.benchmarks.flops            # full size: 512 px, 16-frame clips
    python -m hallo2rt.benchmarks.flops --branches # also the shallow step at every cache branch

The denoiser is built on the meta device (shapes only, no memory, no arithmetic) and each
variant's export wrapper (``export.graphs.DenoiserStepGraph``: what ONNX and TensorRT get) runs
once on meta inputs under torch's ``FlopCounterMode``, which counts every matmul, convolution
and attention core (2 FLOPs per multiply-add). Element-wise ops are not counted (they are
memory-bound and a small share). At full size the faithful step counts 47.64 TFLOP, below
docs/model.md §5's 48.31 (53.95 less the §6 savings) by the motion modules' skipped tails
(§6.7), which the §5 estimate did not subtract.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..engines.spec import DENOISER_VARIANTS, DTYPES


def _meta_denoiser(size: str):
    from ..export.checkpoints import Pretrained
    from ..export.modules import build_module
    from ..random_weights import CONFIGS

    cfg = CONFIGS[size]()
    with torch.device("meta"):
        denoiser = build_module("denoiser", cfg)
    return Pretrained(config=cfg, modules={"denoiser": denoiser})


def _count(module: torch.nn.Module, tensors) -> float:
    """TFLOP of one call of ``module`` on meta inputs shaped like ``tensors`` (TensorSpecs)."""
    inputs = [torch.zeros(t.dims, dtype=DTYPES[t.dtype], device="meta") for t in tensors]
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / 1e12


@functools.lru_cache(maxsize=4)
def step_tflops(model: str = "full", size: int = 512, frames: int = 16) -> dict[str, float]:
    """TFLOP of one call of each step engine (``DENOISER_VARIANTS``) of the ``model`` config
    ("full": the release's architecture; "tiny": the test model) at ``size`` px."""
    from ..export.graphs import GraphShapes, build_graph

    pre, shapes = _meta_denoiser(model), GraphShapes(size=size, frames=frames)
    out = {}
    for name in DENOISER_VARIANTS:
        graph = build_graph(name, pre, shapes)
        out[name] = _count(graph.module, graph.spec.inputs)
    return out


def branch_tflops(model: str = "full", size: int = 512, frames: int = 16) -> list[float]:
    """TFLOP of the shallow step (both CFG halves) at each cache branch 0, 1, ...: what a
    cached step costs if it resumes there (the choice of ``CACHE_BRANCH``)."""
    from dataclasses import replace

    from ..export.graphs import DenoiserStepGraph, GraphShapes, build_graph

    pre, shapes = _meta_denoiser(model), GraphShapes(size=size, frames=frames)
    den = pre["denoiser"]
    full = build_graph("denoiser_deep", pre, shapes)
    specs = {t.name: t for t in full.spec.inputs}
    levels, blocks = full.module.levels, full.module.blocks
    out = []
    for branch in range(den.cache_branches()):
        module = DenoiserStepGraph(den, levels, blocks, 2, "shallow", branch)
        shape = den.cached_feature_shape(branch, 2 * frames, size // 8)
        feature = replace(full.spec.outputs[1], dims=shape)
        out.append(_count(module, [specs[n] for n in module.names[:-1]] + [feature]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("full", "tiny"), default="full")
    p.add_argument("--size", type=int, default=512, help="image side in px")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--branches", action="store_true", help="the shallow step at every branch")
    args = p.parse_args(argv)
    counts = step_tflops(args.model, args.size, args.frames)
    report: dict = {"model": args.model, "size": args.size, "frames": args.frames}
    report["tflop_per_call"] = {k: round(v, 3) for k, v in counts.items()}
    if args.branches:
        report["shallow_tflop_by_branch"] = [
            round(v, 3) for v in branch_tflops(args.model, args.size, args.frames)
        ]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
