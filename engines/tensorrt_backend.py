"""The TensorRT backend, written to TensorRT 10's and 11's documented Python API.

NOT RUN in this project's development environment: TensorRT cannot be installed there. What is
tested without it: ``build_plan`` (typing, flags and profiles derived from the spec, against the
builder flags of TensorRT 10 and 11), the Polygraphy build settings, and the run path's checks
against a stand-in of the runtime API; the real build and run are exercised by tests marked
``tensorrt`` wherever ``import tensorrt`` works, and by ``hallo2rt proof`` on a GPU.

Build, with Polygraphy (as NVIDIA's diffusion demo does): the exported ONNX parsed from its path
(external data is read beside it), one optimisation profile from the spec's (min, opt, max)
where it has symbols (none for static engines), a workspace limit, TF32 off, an optional timing
cache, serialised to ``model.trt<version>.plan`` (a plan only runs on the TensorRT version and GPU
that built it; the manifest records both and opening checks them).

Precision: an fp16 export builds as a strongly typed network (the graph's own types, so the
fp32-pinned normalisation statistics and AudioProj GEMM stay fp32); that is the only fp16 path on
TensorRT 11, which removed the weak-typing flags (``BuilderFlag.FP16/INT8/FP8``). On TensorRT 10
an fp32 export with ``--fp16`` still builds weakly typed (TensorRT picks per layer).

Run (hand-written: Polygraphy's runner synchronises after every call and cannot be captured in a
CUDA graph): ``execute_async_v3`` on torch's current stream (the Session's own non-default
stream); tensor addresses are set only when a buffer changes and every ``set_*`` call's result
is checked; static outputs are allocated once from the plan's own dtypes, which must equal the
spec's. Engines given one ``MemoryPool`` share their activation memory (they run one after
another).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .engine import Engine
from .errors import OptionError
from .manifest import EngineError, Manifest
from .spec import DTYPES, FP32_ONLY, EngineSpec

log = logging.getLogger(__name__)

GIB = 1 << 30
# spec dtype -> trt.DataType member
TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "int64": "INT64"}
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
    spec: EngineSpec,
    config,
    onnx_precision: str,
    compute_capability: str | None,
    weak_typing: bool = True,
) -> BuildPlan:
    """The builder settings for ``spec`` (ValueError when a flag cannot apply).

    weak_typing: whether this TensorRT still has the weak-typing builder flags (10.x: yes;
    11.x removed ``BuilderFlag.FP16/INT8/FP8``, see ``has_weak_typing``)."""
    cc = _cc(compute_capability)
    if config.fp8 and cc < FP8_MIN_CC:
        raise OptionError(
            f"--fp8 needs compute capability >= 8.9; this GPU is {compute_capability}"
        )
    if config.int8 and cc < INT8_MIN_CC:
        raise OptionError(
            f"--int8 needs compute capability >= 6.1; this GPU is {compute_capability}"
        )
    fp16 = config.fp16 and spec.name not in FP32_ONLY  # those stay fp32 in an fp16 build
    strongly_typed = onnx_precision == "fp16" or not (fp16 or config.int8 or config.fp8)
    if strongly_typed and onnx_precision == "fp16" and (config.int8 or config.fp8):
        raise OptionError(
            "--int8/--fp8 are weak-typing flags; build them from an fp32 export "
            "(`hallo2rt export --precision fp32`) with Q/DQ nodes"
        )
    flags = tuple(
        f
        for f, on in (("FP16", fp16), ("INT8", config.int8), ("FP8", config.fp8))
        if on and not strongly_typed
    )
    if flags and not weak_typing:
        raise OptionError(
            f"--{'/--'.join(f.lower() for f in flags)} on an fp32 export needs TensorRT's "
            "weak-typing builder flags, which this TensorRT (11 or later) no longer has: export "
            "in fp16 (`hallo2rt export --precision fp16`) and build without --fp16; the "
            "strongly typed fp16 network keeps the fp32 pins"
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


_LOGGER = None  # one trt.Logger per process (TensorRT warns when a second one is passed)


def _logger(trt):
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def has_weak_typing(trt) -> bool:
    """Whether this TensorRT still has the weak-typing flags (removed in 11, deprecated 10.12)."""
    return hasattr(trt.BuilderFlag, "FP16")


def _polygraphy():
    try:
        from polygraphy.backend import trt as poly
    except ImportError as exc:
        raise EngineError(
            "building TensorRT engines uses Polygraphy: pip install polygraphy (or "
            "pip install 'hallo2rt[tensorrt]')"
        ) from exc
    return poly


def polygraphy_loaders(trt, onnx: Path, plan: BuildPlan, timing_cache: Path | None):
    """Polygraphy's (network loader, builder config loader) for ``plan``; nothing runs yet."""
    poly = _polygraphy()
    network = poly.NetworkFromOnnxPath(str(onnx), strongly_typed=plan.strongly_typed)
    profiles = None
    if plan.profiles:
        profile = poly.Profile()
        for name, (lo, opt, hi) in plan.profiles.items():
            profile.add(name, lo, opt, hi)
        profiles = [profile]
    pools = {trt.MemoryPoolType.WORKSPACE: plan.workspace_bytes} if plan.workspace_bytes else None
    config = poly.CreateConfig(
        tf32=False,  # also for fp16 networks: their fp32 pins are there for precision
        fp16="FP16" in plan.flags,
        int8="INT8" in plan.flags,
        fp8="FP8" in plan.flags,
        profiles=profiles,
        memory_pool_limits=pools,
        load_timing_cache=str(timing_cache) if timing_cache and timing_cache.is_file() else None,
    )
    return network, config


def build(onnx: Path, export: Manifest, out: Path, config, env, timing_cache, checkpoints) -> dict:
    """Build the plan into ``out`` with Polygraphy; returns the manifest's build fields."""

    trt = _trt()
    spec = export.spec
    plan = build_plan(
        spec, config, export.precision, env.get("compute_capability"), has_weak_typing(trt)
    )
    cache_path = Path(timing_cache) if timing_cache else None
    network, bconfig = polygraphy_loaders(trt, onnx, plan, cache_path)
    try:
        serialized = _polygraphy().engine_bytes_from_network(
            network, bconfig, save_timing_cache=str(cache_path) if cache_path else None
        )
    except Exception as exc:  # Polygraphy raises PolygraphyException with TensorRT's log
        raise EngineError(f"TensorRT failed to build {onnx}: {exc}") from exc
    if not serialized:
        raise EngineError(f"TensorRT failed to build {onnx} (see the log above)")
    artifact = plan_name(trt.__version__)
    (out / artifact).write_bytes(bytes(serialized))
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

    def __init__(self, directory: Path, manifest: Manifest, device: torch.device, **options: Any):
        super().__init__(directory, manifest, device)
        self.pool: MemoryPool | None = options.get("memory_pool")

    def _open(self) -> None:
        trt = _trt()
        path = self.artifact
        self._runtime = trt.Runtime(_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"{path} could not be deserialised: corrupt, or built by another TensorRT; "
                f"rebuild: {self.manifest.rebuild}"
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
        self._warned_default_stream = False

    def _check_io(self, trt) -> None:
        """The plan's tensors have the spec's names, directions and dtypes (buffers are
        allocated from the spec: a dtype mismatch would write past them)."""
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        want_in = [t.name for t in self.spec.inputs]
        want_out = [t.name for t in self.spec.outputs]
        problems = []
        if sorted(inputs) != sorted(want_in) or sorted(set(names) - set(inputs)) != sorted(
            want_out
        ):
            problems.append(f"the plan's tensors {names} are not the spec's")
        else:
            for t in self.spec.inputs + self.spec.outputs:
                got = self._engine.get_tensor_dtype(t.name)
                if got != getattr(trt.DataType, TRT_DTYPES[t.dtype]):
                    problems.append(f"{t.name} is {got} in the plan, {t.dtype} in the spec")
        if problems:
            raise EngineError(
                f"{self.directory}: the plan does not match the {self.name} spec ("
                + "; ".join(problems)
                + f"); rebuild: {self.manifest.rebuild}"
            )

    def _set_address(self, name: str, tensor: torch.Tensor) -> None:
        ptr = tensor.data_ptr()
        if self._bound.get(name) != ptr:
            # False: TensorRT kept the old address (e.g. one not 256-byte aligned); running on
            # would read stale memory without an error
            if not self._context.set_tensor_address(name, ptr):
                raise EngineError(
                    f"TensorRT refused the address of {self.name}.{name} ({ptr:#x}, "
                    f"{ptr % 256} bytes past a 256-byte boundary); see the log above"
                )
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
            if not self._static and not self._context.set_input_shape(t.name, tuple(value.shape)):
                raise EngineError(
                    f"TensorRT refused shape {tuple(value.shape)} for {self.name}.{t.name} "
                    f"(profile: {self.spec.profiles}); see the log above"
                )
            self._set_address(t.name, value)
        for t in self.spec.outputs:
            shape = tuple(self._context.get_tensor_shape(t.name))
            buf = self._outputs.get(t.name)
            if buf is None or tuple(buf.shape) != shape:
                buf = torch.empty(shape, dtype=DTYPES[t.dtype], device=self.device)
                self._outputs[t.name] = buf
            self._set_address(t.name, buf)
        stream = torch.cuda.current_stream(self.device)
        if stream.cuda_stream == 0 and not self._warned_default_stream:
            log.warning(  # TensorRT adds device-wide syncs on the legacy default stream
                "%s runs on the default CUDA stream; open it in a Session (`with session:`) "
                "or under torch.cuda.stream(...)",
                self.name,
            )
            self._warned_default_stream = True
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run {self.name} (see the log above)")
        return dict(self._outputs)

    def _close(self) -> None:
        self._context = self._engine = self._runtime = None
        self._outputs, self._bound = {}, {}


ENGINE = TensorRTEngine
