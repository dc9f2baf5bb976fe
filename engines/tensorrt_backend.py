"""The TensorRT backend, written to TensorRT 10's documented Python API.

NOT RUN in this project's development environment: TensorRT cannot be installed there. What is
tested without it is ``build_plan`` (flags, typing and profiles derived from the spec); the build
and run paths are exercised by tests marked ``tensorrt`` wherever ``import tensorrt`` works.

Build: parse the exported ONNX (external data is read beside it), one optimisation profile from
the spec's (min, opt, max) where it has symbols (none for static engines), a workspace limit, an
optional timing cache, then serialise to ``model.trt<version>.plan`` (a plan only runs on the
TensorRT version and GPU that built it; the manifest records both and opening checks them).

Precision: an fp16 export builds as a strongly typed network (the graph's own types, so the
fp32-pinned normalisation statistics and AudioProj GEMM stay fp32); an fp32 export with ``--fp16``
builds weakly typed with the FP16 flag (TensorRT picks per layer); a plain fp32 build also turns
TF32 off, so that it can be checked against fp32 ONNX Runtime at 1e-4.

Run: ``execute_async_v3`` on torch's current stream; tensor addresses are set only when a
buffer changes (a runtime that reuses buffers binds once); static outputs are allocated once.
Engines given one ``MemoryPool`` share their activation memory (they run one after another).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .engine import Engine
from .manifest import EngineError
from .spec import DTYPES, FP32_ONLY, EngineSpec

log = logging.getLogger(__name__)

GIB = 1 << 30
FP8_MIN_CC = (8, 9)  # Ada / Hopper
INT8_MIN_CC = (6, 1)


@dataclass(frozen=True)
class BuildPlan:
    """Everything the builder is told, derived from the spec and BuildConfig (no TensorRT)."""

    strongly_typed: bool  # network creation flag STRONGLY_TYPED
    flags: tuple[str, ...]  # BuilderFlag names to set
    clear_flags: tuple[str, ...]  # BuilderFlag names to clear
    profiles: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    workspace_bytes: int = 0  # 0: TensorRT's default
    precision: str = "fp32"  # what the engine computes in, for the manifest


def _cc(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 0)
    major, minor = text.split(".")
    return int(major), int(minor)


def build_plan(
    spec: EngineSpec, config, onnx_precision: str, compute_capability: str | None
) -> BuildPlan:
    """The builder settings for ``spec`` (ValueError when a flag cannot apply)."""
    cc = _cc(compute_capability)
    if config.fp8 and cc < FP8_MIN_CC:
        raise ValueError(f"--fp8 needs compute capability >= 8.9; this GPU is {compute_capability}")
    if config.int8 and cc < INT8_MIN_CC:
        raise ValueError(
            f"--int8 needs compute capability >= 6.1; this GPU is {compute_capability}"
        )
    fp16 = config.fp16 and spec.name not in FP32_ONLY  # those stay fp32 in an fp16 build
    strongly_typed = onnx_precision == "fp16" or not (fp16 or config.int8 or config.fp8)
    if strongly_typed and onnx_precision == "fp16" and (config.int8 or config.fp8):
        raise ValueError(
            "--int8/--fp8 are weak-typing flags; build them from an fp32 export "
            "(`hallo2rt export --precision fp32`) with Q/DQ nodes"
        )
    flags = tuple(
        f
        for f, on in (("FP16", fp16), ("INT8", config.int8), ("FP8", config.fp8))
        if on and not strongly_typed
    )
    plain_fp32 = onnx_precision == "fp32" and not flags
    profiles = {}
    for t in spec.inputs:
        if any(isinstance(d, str) for d in t.dims):
            profiles[t.name] = tuple(t.shape(spec.sizes(w)) for w in ("min", "opt", "max"))
    return BuildPlan(
        strongly_typed=strongly_typed,
        flags=flags,
        clear_flags=("TF32",) if plain_fp32 else (),
        profiles=profiles,
        workspace_bytes=int(config.workspace_gb * GIB),
        precision="fp32" if plain_fp32 else "fp16",
    )


def plan_name(version: str) -> str:
    """Engine file named with the TensorRT version that built it."""
    return f"model.trt{version}.plan"


def _trt():
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(
            "the tensorrt backend needs TensorRT: pip install tensorrt (NVIDIA's index), on a "
            "machine with an NVIDIA GPU and driver; `hallo2rt doctor` shows what is missing"
        ) from exc
    return tensorrt


def check_available(config, env: dict[str, Any]) -> None:
    _trt()
    if not torch.cuda.is_available():
        raise EngineError("TensorRT engines need a CUDA GPU visible to torch; none is here")


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def build(onnx: Path, export: dict, out: Path, config, env, timing_cache, checkpoints) -> dict:
    """Build the plan into ``out``; returns the manifest's build fields."""
    from .spec import spec_from_json

    trt = _trt()
    spec = spec_from_json(export["spec"])
    plan = build_plan(spec, config, export["precision"], env.get("compute_capability"))
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT could not parse {onnx}: " + "; ".join(errors))
    bconfig = builder.create_builder_config()
    if plan.workspace_bytes:
        bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for name in plan.flags:
        bconfig.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        bconfig.clear_flag(getattr(trt.BuilderFlag, name))
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in plan.profiles.items():
            profile.set_shape(name, lo, opt, hi)
        bconfig.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        bconfig.set_timing_cache(bconfig.create_timing_cache(data), False)
    serialized = builder.build_serialized_network(network, bconfig)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {onnx} (see the log above)")
    artifact = plan_name(trt.__version__)
    (out / artifact).write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.write_bytes(bytes(bconfig.get_timing_cache().serialize()))
    return {
        "precision": plan.precision,
        "artifact": artifact,
        "tensorrt_plan": {
            "strongly_typed": plan.strongly_typed,
            "flags": list(plan.flags),
            "cleared_flags": list(plan.clear_flags),
            "profiles": {k: [list(s) for s in v] for k, v in plan.profiles.items()},
            "workspace_bytes": plan.workspace_bytes,
            "timing_cache": str(cache_path) if cache_path else None,
        },
    }


class MemoryPool:
    """One activation buffer shared by engines that run one after another on one stream.

    Each engine states its need at open; the buffer is (re)allocated at the largest need on first
    use, and engines bound to an older buffer rebind (``generation`` changes)."""

    def __init__(self, device: torch.device):
        self.device, self.size, self.generation = device, 0, 0
        self._buffer: torch.Tensor | None = None

    def require(self, nbytes: int) -> None:
        if nbytes > self.size:
            self.size, self._buffer = nbytes, None

    def address(self) -> tuple[int, int]:
        if self._buffer is None:
            self._buffer = torch.empty(self.size, dtype=torch.uint8, device=self.device)
            self.generation += 1
        return self._buffer.data_ptr(), self.generation


class TensorRTEngine(Engine):
    """A deserialised plan with one execution context."""

    backend = "tensorrt"

    def __init__(self, directory: Path, manifest: dict, device: torch.device, **options: Any):
        super().__init__(directory, manifest, device)
        self.pool: MemoryPool | None = options.get("memory_pool")

    def _open(self) -> None:
        trt = _trt()
        path = self.directory / self.manifest["artifact"]
        self._runtime = trt.Runtime(_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"{path} could not be deserialised: corrupt, or built by another TensorRT; "
                f"rebuild: {self.manifest.get('rebuild')}"
            )
        self._check_io(trt)
        if self.pool is not None:
            strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
            self._context = self._engine.create_execution_context(strategy)
            size = getattr(self._engine, "device_memory_size_v2", None)
            self.pool.require(size if size is not None else self._engine.device_memory_size)
        else:
            self._context = self._engine.create_execution_context()
        self._generation = 0
        self._bound: dict[str, int] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        self._static = not self.spec.profiles

    def _check_io(self, trt) -> None:
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        want_in = [t.name for t in self.spec.inputs]
        want_out = [t.name for t in self.spec.outputs]
        if sorted(inputs) != sorted(want_in) or sorted(set(names) - set(inputs)) != sorted(
            want_out
        ):
            raise EngineError(
                f"{self.directory}: the plan's tensors {names} do not match the {self.name} "
                f"spec; rebuild: {self.manifest.get('rebuild')}"
            )

    def _set_address(self, name: str, tensor: torch.Tensor) -> None:
        ptr = tensor.data_ptr()
        if self._bound.get(name) != ptr:
            self._context.set_tensor_address(name, ptr)
            self._bound[name] = ptr

    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.pool is not None:
            ptr, generation = self.pool.address()
            if generation != self._generation:
                if hasattr(self._context, "set_device_memory"):
                    self._context.set_device_memory(ptr, self.pool.size)
                else:
                    self._context.device_memory = ptr
                self._generation = generation
        # Contiguous copies of strided inputs stay referenced until the next call: TensorRT
        # only holds their addresses and runs asynchronously on the stream.
        self._inputs = {t.name: feed[t.name].contiguous() for t in self.spec.inputs}
        for t in self.spec.inputs:
            value = self._inputs[t.name]
            if not self._static:
                self._context.set_input_shape(t.name, tuple(value.shape))
            self._set_address(t.name, value)
        for t in self.spec.outputs:
            shape = tuple(self._context.get_tensor_shape(t.name))
            buf = self._outputs.get(t.name)
            if buf is None or tuple(buf.shape) != shape:
                buf = torch.empty(shape, dtype=DTYPES[t.dtype], device=self.device)
                self._outputs[t.name] = buf
            self._set_address(t.name, buf)
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run {self.name} (see the log above)")
        return dict(self._outputs)

    def _close(self) -> None:
        self._context = self._engine = self._runtime = None
        self._outputs, self._bound = {}, {}


ENGINE = TensorRTEngine
