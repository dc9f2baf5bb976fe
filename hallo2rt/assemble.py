"""The composition layer: what a run's ``Session`` is made of, decided in one place.

The CLI, the benchmarks, the proof and (next) the server ask here for "a session for these
engines"; nothing else wires export, engines and runtime together. It may import every package
(docs/architecture.md): built engines come from ``runtime.session.Session.open``; torch engines
are the export wrappers over loaded (or in-memory) checkpoints; ``export_and_build`` makes engines
of another backend from checkpoints first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from .engines.errors import OptionError
from .engines.manifest import EngineError
from .engines.spec import FP32_ONLY, GENERATION, SUPER_RESOLUTION, run_engines
from .runtime.session import Session


def session_from_pretrained(
    pre,
    shapes,
    device: str | torch.device = "cpu",
    fp16: bool = False,
    names: tuple[str, ...] | None = None,
) -> Session:
    """A ``Session`` of torch engines ``names`` (default: generation) over loaded checkpoints
    ``pre`` (``export.checkpoints.Pretrained``) at ``shapes`` (``export.graphs.GraphShapes``);
    no build step. fp16: half weights, except the engines that stay fp32 (``FP32_ONLY``)."""
    from .engines.torch_backend import TorchEngine
    from .export.graphs import build_graph, fit_shapes

    names = names or GENERATION
    shapes = fit_shapes(shapes, pre)
    device = torch.device(device)
    engines = {
        name: TorchEngine.from_graph(
            build_graph(name, pre, shapes),
            device,
            "fp16" if fp16 and name not in FP32_ONLY else "fp32",
        )
        for name in names
    }
    return Session(engines, device, names)


def _check_device(device: torch.device, fp16: bool) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(
            "--device cuda was requested but torch sees no CUDA GPU here; use "
            "--device cpu or install a CUDA build of torch"
        )
    if fp16 and device.type == "cpu":
        raise EngineError(
            "--dtype fp16 needs a GPU (CPU fp16 convolutions are ~1000x slower); "
            "use --dtype fp32 on the CPU"
        )


def load_torch_session(
    checkpoints: str | Path,
    device: str = "cpu",
    fp16: bool = False,
    size: int = 512,
    frames: int = 16,
    generation: bool = True,
    upscale: bool = False,
    steps: tuple[str, ...] = (),
) -> Session:
    """The components of an official ``pretrained_models/`` tree as a Session of torch engines
    at ``size`` x ``size``, ``frames`` frames per clip: those of a generation (with the step
    engines ``steps``) and/or those of super-resolution (``upscale``). Only their files are
    read."""
    from .export.checkpoints import GENERATION_COMPONENTS, load_pretrained
    from .export.graphs import GraphShapes

    dev = torch.device(device)
    _check_device(dev, fp16)
    components = (GENERATION_COMPONENTS if generation else ()) + (
        SUPER_RESOLUTION if upscale else ()
    )
    pre = load_pretrained(checkpoints, components)
    shapes = GraphShapes(size=size, frames=frames)
    names = run_engines(generation, upscale, steps)
    return session_from_pretrained(pre, shapes, dev, fp16, names)


def open_session(
    engines: str | Path | None = None,
    checkpoints: str | Path | None = None,
    overrides: dict[str, str | Path] | None = None,
    device: str | None = None,
    dtype: str = "fp32",
    size: int | None = None,
    frames: int = 16,
    generation: bool = True,
    upscale: bool = False,
    steps: tuple[str, ...] = (),
) -> Session:
    """The session of a run (unopened: use ``with``): built ``engines`` (with ``overrides``,
    engine name -> another build's root), or torch engines over ``checkpoints``; the engines of
    a generation (with the step engines ``steps`` of its plan) and/or of super-resolution.
    device None: the engines' own (built) or the CPU (checkpoints). dtype and size apply to
    checkpoints only (built engines have theirs)."""
    overrides = overrides or {}
    if engines is not None:
        if dtype != "fp32":
            raise OptionError(
                "--dtype applies to --checkpoints; built engines run at the precision they "
                "were exported and built with (hallo2rt export --precision / build --fp16)"
            )
        names = run_engines(generation, upscale, steps)
        return Session.open(engines, device, overrides, names)
    if overrides:
        raise OptionError("--engine NAME=DIR needs --engines")
    if checkpoints is None:
        raise OptionError("give --checkpoints (PyTorch) or --engines (built engines)")
    return load_torch_session(
        checkpoints,
        device or "cpu",
        dtype == "fp16",
        size or 512,
        frames,
        generation,
        upscale,
        steps,
    )


def export_and_build(
    checkpoints: Path,
    shapes,
    workdir: Path,
    backend: str,
    device: str,
    fp16: bool,
    names: Iterable[str],
) -> Session:
    """Export the engines ``names`` of a checkpoint tree into ``workdir/onnx``, build them for
    ``backend`` into ``workdir/engines`` (each checked against its ONNX) and return their
    session (``bench --backend``, the proof)."""
    from .engines.build import BuildConfig, build_engines
    from .export.onnx import export_engines

    names = list(names)
    export_engines(checkpoints, workdir / "onnx", names, shapes, "fp16" if fp16 else "fp32")
    config = BuildConfig(backend, device, fp16=fp16)
    build_engines(workdir / "onnx", workdir / "engines", config, only=names)
    return Session.open(workdir / "engines", names=tuple(names))


def place_modules(modules: dict, device: str, fp16: bool) -> None:
    """Modules on ``device`` in the run's precision (``FP32_ONLY`` stay fp32, as officially)."""
    for name, module in modules.items():
        fp32 = not fp16 or name in FP32_ONLY
        module.to(device, torch.float32 if fp32 else torch.float16)


def bench_session(
    workdir: Path,
    names: tuple[str, ...],
    engines: Path | None = None,
    checkpoints: Path | None = None,
    random: str | None = None,
    backend: str = "torch",
    device: str = "cpu",
    dtype: str = "fp32",
    size: int = 512,
    frames: int = 16,
    log=lambda s: None,
) -> tuple[Session, dict | None]:
    """The session ``hallo2rt bench`` times and the PyTorch modules of the official-style
    baseline (None for built engines): built ``engines``; or ``checkpoints`` (a ``random`` tree
    of that size written into ``workdir`` when None) as torch engines, or exported and built for
    ``backend`` into ``workdir`` first."""
    if engines is not None:
        return Session.open(engines, names=names), None
    from .export.checkpoints import GENERATION_COMPONENTS, load_pretrained
    from .export.graphs import GraphShapes, fit_shapes

    root = checkpoints
    if root is None:
        from .random_weights import make_random_pretrained

        root = workdir / "pretrained_models"
        log(f"writing a {random} random tree ...")
        sr_only = not any(n in names for n in GENERATION)
        only = SUPER_RESOLUTION if sr_only else None  # 0.6 GB instead of ~10 GB
        make_random_pretrained(root, random or "tiny", seed=0, only=only)
    generation = any(n in names for n in GENERATION)
    sr = SUPER_RESOLUTION if any(n not in GENERATION for n in names) else ()
    pre = load_pretrained(root, (GENERATION_COMPONENTS if generation else ()) + sr)
    shapes = fit_shapes(GraphShapes(size=size, frames=frames), pre)
    fp16 = dtype == "fp16"
    modules = {k: v for k, v in pre.modules.items() if k in GENERATION_COMPONENTS}
    if backend == "torch":
        return session_from_pretrained(pre, shapes, device, fp16, names), modules
    log(f"exporting and building {backend} engines ...")
    session = export_and_build(root, shapes, workdir, backend, device, fp16, names)
    place_modules(modules, device, fp16)  # the baseline's modules
    return session, modules
