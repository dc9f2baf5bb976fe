"""``Session``: the engines one generation uses, opened once per process (docs/architecture.md,
"Runtime").

The runtime talks to engines only through ``Session.run(name, **inputs)``: inputs are moved to
the engine's device and cast to its spec's dtypes, outputs come back on the session's device.
Engines may come from different directories and backends (e.g. a TensorRT denoiser with an ONNX
Runtime audio encoder); TensorRT engines of one session share one activation pool. Shapes the
runtime needs (image side, frames per clip, motion frames, embedding width) are read from the
specs, so a session and a run that disagree fail before any work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..engines.bank import (
    LOOP_INPUTS,
    MASK_KINDS,
    mask_name,
    motion_name,
    reference_kv_names,
)
from ..engines.engine import Engine, open_engine
from ..engines.manifest import EngineError
from ..engines.spec import (
    DENOISER_VARIANTS,
    DTYPES,
    GENERATION,
    SPEED_ENGINES,
    SUPER_RESOLUTION,
    EngineSpec,
)

log = logging.getLogger(__name__)


def _normalised(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:<current>``, so that the same GPU compares equal however named."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Session:
    """Opened engines by name, plus the facts the runtime reads off their specs."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        device: torch.device | str,
        require: tuple[str, ...] = GENERATION,
    ):
        missing = [n for n in require if n not in engines]
        if missing:
            raise EngineError(f"this run needs the engines {missing} as well")
        self.engines, self.device = dict(engines), _normalised(torch.device(device))
        self._entered = False
        self._cache: dict[Any, Any] = {}
        self.stream: torch.cuda.Stream | None = None  # while entered on a GPU
        self._stream_ctx: Any = None
        if all(n in engines for n in GENERATION):
            self._read_generation_specs()

    @property
    def upscales(self) -> bool:
        """Whether the session holds the super-resolution engines (``--upscale``)."""
        return all(n in self.engines for n in SUPER_RESOLUTION)

    def _read_generation_specs(self) -> None:
        den = self.spec("denoiser_step")
        latents = den.inputs[0].dims  # (1, 4, F, h, w)
        self.frames, self.latent = int(latents[2]), int(latents[3])
        self.size = self.latent * 8
        names = {t.name for t in den.inputs}
        self.hooked = sum(1 for i in range(len(names)) if motion_name(i) in names)
        self.motion_frames = int(next(t for t in den.inputs if t.name == motion_name(0)).dims[1])
        self.levels = sum(1 for lv in range(len(names)) if mask_name(MASK_KINDS[0], lv) in names)
        self.embedding_dim = int(self.spec("image_proj").inputs[0].dims[1])
        self._check_contract()

    def _check_contract(self) -> None:
        """The denoiser's inputs are exactly what the other engines and the runtime provide
        (engines exported by another version of hallo2rt fail here, not mid-run)."""
        ref = {n for i in range(self.hooked) for n in reference_kv_names(i)}
        provided = {*LOOP_INPUTS, "face_feature", "motion_scale"}
        provided |= {t.name for t in self.spec("image_proj").outputs} - {"image_tokens"}
        provided |= {t.name for t in self.spec("audio_proj").outputs}
        provided |= {t.name for t in self.spec("reference_unet").outputs} & ref
        provided |= {motion_name(i) for i in range(self.hooked)}
        provided |= {mask_name(k, lv) for k in MASK_KINDS for lv in range(self.levels)}
        wanted = {t.name for t in self.spec("denoiser_step").inputs}
        if wanted != provided:
            missing, extra = sorted(wanted - provided), sorted(provided - wanted)
            raise EngineError(
                "these engines do not fit together or this version of hallo2rt (denoiser_step "
                f"inputs nobody provides: {missing[:6]}; provided but not taken: {extra[:6]}); "
                "export and build them again with this version"
            )
        self._check_step_engines()

    def _check_step_engines(self) -> None:
        """The speed engines take denoiser_step's inputs at its shapes (a conditional-only one
        all but cfg_scale), and each shallow engine the feature its deep partner outputs."""
        base = {t.name: tuple(t.dims) for t in self.spec("denoiser_step").inputs}
        for name in SPEED_ENGINES:
            if name not in self.engines:
                continue
            halves, part = DENOISER_VARIANTS[name]
            spec = self.spec(name)
            got = {t.name: tuple(t.dims) for t in spec.inputs if t.name != "deep_feature"}
            want = {k: v for k, v in base.items() if halves == 2 or k != "cfg_scale"}
            if part == "shallow":  # it takes only what its layers read
                want = {k: v for k, v in want.items() if k in got}
            if got != want:
                odd = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
                raise EngineError(
                    f"{name} does not fit denoiser_step (inputs that differ: {odd[:6]}): export "
                    "and build both with the same checkpoints, --size and --frames"
                )
            partner = name.replace("_shallow", "_deep")
            if part == "shallow" and partner in self.engines:
                takes = next(t.dims for t in spec.inputs if t.name == "deep_feature")
                gives = next(t.dims for t in self.spec(partner).outputs if t.name == "deep_feature")
                if tuple(takes) != tuple(gives):
                    raise EngineError(
                        f"{name} takes a feature of shape {tuple(takes)} but {partner} gives "
                        f"{tuple(gives)} (another cache branch or version): export and build "
                        "both again with this version"
                    )

    @classmethod
    def open(
        cls,
        root: str | Path,
        device: str | torch.device | None = None,
        overrides: dict[str, str | Path] | None = None,
        names: tuple[str, ...] = GENERATION,
    ) -> Session:
        """Engines ``names`` built by ``hallo2rt build`` in ``root`` (``overrides``: name ->
        another engine directory's root, e.g. another backend). Each is checked for staleness
        now."""
        overrides = overrides or {}
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise EngineError(f"unknown engines {unknown}; known: {', '.join(names)}")
        absent = [
            n
            for n in names
            if n in SPEED_ENGINES and not (Path(overrides.get(n, root)) / n).is_dir()
        ]
        if absent:
            only = ",".join(absent)
            raise EngineError(
                f"{root} has no {', '.join(absent)}: this run's speed preset calls them. Export "
                f"and build them beside the others (hallo2rt export --checkpoints DIR --out ONNX "
                f"--only {only}, then hallo2rt build --onnx ONNX --out {root} --only {only} "
                "with the same backend and flags), or run --preset faithful"
            )
        pool = None
        engines = {}
        for name in names:
            directory = Path(overrides.get(name, root)) / name
            engine = open_engine(directory, None if name in overrides else device)
            if engine.backend == "tensorrt":
                from ..engines.tensorrt_backend import MemoryPool, TensorRTEngine

                assert isinstance(engine, TensorRTEngine)
                pool = pool or MemoryPool(engine.device)
                engine.pool = pool
            engines[name] = engine
        main = engines[names[0] if "denoiser_step" not in names else "denoiser_step"].device
        return cls(engines, device or main, names)

    def __enter__(self) -> Session:
        """Open every engine. On a GPU the session's own non-default stream becomes the current
        stream until exit, before any engine opens: TensorRT enqueues on the current stream
        (the legacy default stream costs it extra device-wide syncs) and ONNX Runtime is given
        that stream's handle at open, so every engine and torch op of a run is ordered on one
        stream without device-wide synchronisation."""
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)
            self._stream_ctx = torch.cuda.stream(self.stream)
            self._stream_ctx.__enter__()
        opened = []
        try:
            for engine in self.engines.values():
                engine.open()
                opened.append(engine)
        except BaseException:
            for engine in opened:
                engine.close()
            self._leave_stream()
            raise
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        for engine in self.engines.values():
            engine.close()
        self._entered = False
        self._cache.clear()  # captured graphs hold engine buffers' addresses
        self._leave_stream()

    def _leave_stream(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
            self._stream_ctx.__exit__(None, None, None)
        self.stream = self._stream_ctx = None

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per open session and ``key`` (e.g. the runtime's step loop and its
        CUDA graph, so that it is captured once, not per call)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def spec(self, name: str) -> EngineSpec:
        return self.engines[name].spec

    def run(self, name: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One engine call; inputs by spec name, in any float dtype, on any device. Outputs may
        be overwritten by the next call of the same engine: copy what you keep."""
        engine = self.engines[name]
        feed = {
            t.name: inputs[t.name].to(engine.device, DTYPES[t.dtype])
            for t in engine.spec.inputs
            if t.name in inputs
        }
        out = engine.infer(feed)
        if _normalised(engine.device) != self.device:
            out = {k: v.to(self.device) for k, v in out.items()}
        return out

    def describe(self) -> dict[str, Any]:
        """name -> "backend precision device" (for logs and benchmark records)."""
        return {
            n: f"{e.backend} {e.manifest.precision} {e.device}" for n, e in self.engines.items()
        }
