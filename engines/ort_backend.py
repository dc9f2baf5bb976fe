"""The ONNX Runtime backend: CPU provider (tests, CI, the demo) and CUDA provider with IO binding
over torch tensors and, for static engines, ORT's CUDA-graph option.

Build: the exported attention subgraphs become ORT's fused MultiHeadAttention
(``attention_fusion``); ORT then optimises the graph once (extended level: fusions that are valid
for the provider and portable across machines) and saves it, so opening does not redo it. Large
models keep their weights in one external data file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .engine import Engine
from .manifest import EngineError, Manifest
from .spec import DTYPES, FP32_ONLY, random_feed

log = logging.getLogger(__name__)

ARTIFACT = "model.ort.onnx"
EXTERNAL_DATA = ARTIFACT + ".data"
EXTERNAL_MIN_BYTES = 1024  # initialisers from this size go to the data file (when it is used)
LARGE_MODEL_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin
# CPU checks fuse attention whose score tensor passes this (the 512 px denoiser's: 17.2 GB);
# below it they run the exported graph as it is.
SCORES_BUDGET_BYTES = 1 << 30

_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)"}


def io_mismatches(spec, inputs, outputs) -> list[str]:
    """Where ORT's view of a model (``get_inputs()``/``get_outputs()``: name, type, shape with
    ints for fixed dims) disagrees with ``spec``: names, order, dtypes, fixed dims."""
    problems = []
    for kind, want, have in (("input", spec.inputs, inputs), ("output", spec.outputs, outputs)):
        names, said = [a.name for a in have], [t.name for t in want]
        if names != said:
            problems.append(f"{kind}s {names[:5]}, the manifest says {said[:5]}")
            continue
        for t, a in zip(want, have, strict=True):
            if a.type != _ORT_TYPES.get(t.dtype):
                problems.append(f"{kind} {t.name} is {a.type}, the manifest says {t.dtype}")
            fixed = [
                (d, g)
                for d, g in zip(t.dims, a.shape, strict=False)
                if isinstance(d, int) and isinstance(g, int)
            ]
            if len(a.shape) != len(t.dims) or any(d != g for d, g in fixed):
                problems.append(
                    f"{kind} {t.name} is {list(a.shape)}, the manifest says {list(t.dims)}"
                )
    return problems


_NP_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64"}


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError(
            "the onnxruntime backend needs onnxruntime: pip install onnxruntime "
            "(or onnxruntime-gpu for the CUDA provider)"
        ) from exc
    return onnxruntime


def _provider(
    device: torch.device,
    cuda_graph: bool = False,
    fp32: bool = True,
    stream: int = 0,
    dynamic: bool = False,
) -> list:
    """The execution provider list of a session on ``device``.

    CUDA options: ``use_tf32`` 0 for fp32 engines (ORT enables TF32 by default, ~1e-3 relative
    error, which the 1e-4 fp32 gate rejects); ``user_compute_stream`` the run's stream when it
    is a real stream (ORT ignores 0 and uses its own); the CUDA graph only for static engines;
    dynamic engines choose convolution algorithms heuristically (an exhaustive search per new
    shape makes every new size slow); the arena grows by what is asked, not to the next power
    of two."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    options = {
        "device_id": str(device.index or 0),
        "arena_extend_strategy": "kSameAsRequested",
    }
    if fp32:
        options["use_tf32"] = "0"
    if stream:
        options["user_compute_stream"] = str(stream)
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    if dynamic:
        options["cudnn_conv_algo_search"] = "HEURISTIC"
    return [("CUDAExecutionProvider", options)]


def _inference_session(ort, model, opts, providers: list, what: str):
    """An InferenceSession that really runs on CUDA: ORT only *warns* when the CUDA provider
    fails to load (missing CUDA/cuDNN libraries) and silently runs on the CPU instead."""
    cuda = not isinstance(providers[0], str)
    if cuda and hasattr(ort, "preload_dlls"):  # ORT >= 1.21: CUDA/cuDNN from pip's packages
        try:
            ort.preload_dlls()
        except Exception as exc:  # best effort; the provider check below decides
            log.debug("onnxruntime.preload_dlls: %s", exc)
    sess = ort.InferenceSession(model, opts, providers=providers)
    active = sess.get_providers()
    if cuda and active[0] != "CUDAExecutionProvider":
        raise EngineError(
            f"onnxruntime could not start its CUDA provider for {what} (running on {active}): "
            "its CUDA/cuDNN libraries did not load; install the onnxruntime-gpu build that "
            "matches your CUDA (`hallo2rt doctor` probes it), or use --device cpu"
        )
    return sess


def run_on_cpu(path: Path, feed: dict, optimize: bool = True, fuse: bool = False) -> list:
    """Run an ONNX graph once in ONNX Runtime on the CPU (numpy in, numpy out, outputs in graph
    order), then release the session and its memory, so that a PyTorch reference run that
    follows does not add to ORT's peak (full-size checks). ``optimize=False``: no graph
    optimisation, the plainest reading of the graph (the build checks' reference), and the
    weights read from the file as they are used (no prepacked copies). ``fuse``: run the graph
    with its attention fused (``attention_fusion``), for shapes whose score tensors would not
    fit in memory (see ``check_on_cpu``)."""
    ort = _ort()
    opts = session_options(ort)
    opts.enable_cpu_mem_arena = False
    # ORT's buffer reuse keeps a dead value's buffer for a later one of the same size, which
    # holds it meanwhile: on the full-size denoiser it doubles the peak of a single run
    opts.enable_mem_reuse = False
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = _fused(opts, Path(path))[0] if fuse else str(path)
    sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    try:
        return sess.run(None, feed)
    finally:
        del sess


def _fused(opts, path: Path) -> tuple[bytes, int]:
    """The model bytes of ``path`` with its attention fused and how many subgraphs were; ``opts``
    told where its weights are (the bytes keep their external data references)."""
    from .attention_fusion import fused_bytes

    model, count = fused_bytes(path)
    folder = "session.model_external_initializers_file_folder_path"
    opts.add_session_config_entry(folder, str(path.parent.resolve()))
    log.info("%s: %d attention subgraphs fused into MultiHeadAttention", path, count)
    return model, count


def check_on_cpu(path: Path, feed: dict, optimize: bool = True) -> tuple[list, str]:
    """``run_on_cpu`` for a check of ``path`` on ``feed``, and a note saying how it ran (for
    manifests): when its largest score tensor, which unfused ORT allocates in one piece, passes
    ``SCORES_BUDGET_BYTES``, attention runs fused and the graph unoptimised (no prepacked weight
    copies); otherwise the graph runs as exported."""
    from .attention_fusion import largest_scores_bytes, load_graph

    model = load_graph(Path(path))
    largest = largest_scores_bytes(model, {k: tuple(v.shape) for k, v in feed.items()})
    gb = f"{largest / 1e9:.2f} GB"
    if largest > SCORES_BUDGET_BYTES:
        note = f"fused into MultiHeadAttention, no graph optimisation (largest score tensor {gb})"
        return run_on_cpu(path, feed, optimize=False, fuse=True), note
    return run_on_cpu(path, feed, optimize), f"as exported (largest score tensor {gb})"


def check_available(config, env: dict[str, Any]) -> None:
    """``EngineError`` unless this machine can build/run ONNX Runtime engines for ``config``."""
    ort = _ort()
    if config.device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineError(
                f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (providers: "
                f"{ort.get_available_providers()}); install onnxruntime-gpu, or --device cpu"
            )
        if not torch.cuda.is_available():
            raise EngineError("--device cuda: torch sees no CUDA GPU (IO binding uses torch)")


def session_options(ort, log_level: int = 3):
    """ORT session options with quiet logs and torch's CPU thread count (``--threads``), so
    that one setting governs every CPU kernel of a run."""
    opts = ort.SessionOptions()
    opts.log_severity_level = log_level
    opts.intra_op_num_threads = torch.get_num_threads()
    return opts


def build(onnx: Path, export: Manifest, out: Path, config, env, timing_cache, checkpoints) -> dict:
    """Save the provider-optimised graph into ``out``; returns the manifest's build fields."""
    ort = _ort()
    if config.fp16 and export.precision != "fp16" and export.engine not in FP32_ONLY:
        raise EngineError(
            f"{onnx} is an fp32 export; ONNX Runtime runs the precision of the export: "
            "re-export with `hallo2rt export --precision fp16`, or build without --fp16"
        )
    large = onnx.with_name(onnx.name + ".data").is_file()
    opts = session_options(ort)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out / ARTIFACT)
    if large:
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", EXTERNAL_DATA
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(EXTERNAL_MIN_BYTES),
        )
    device = torch.device(config.device)
    spec = export.spec
    try:
        model, count = _fused(opts, onnx)
        providers = _provider(device, fp32=export.precision == "fp32")
        sess = _inference_session(ort, model, opts, providers, str(onnx))
        del sess
    except EngineError:
        raise
    except Exception as exc:  # ORT raises its own exception types
        raise EngineError(f"onnxruntime could not load {onnx}: {exc}") from exc
    return {
        "precision": export.precision,
        "artifact": ARTIFACT,
        "artifact_data": [EXTERNAL_DATA] if large else [],
        "provider": _provider(device)[0] if device.type == "cpu" else "CUDAExecutionProvider",
        "optimization": "ORT_ENABLE_EXTENDED, saved at build",
        # ORT replays captured graphs only with fixed shapes and addresses
        "cuda_graph": bool(config.cuda_graph) and not spec.profiles,
        # no score tensors: flash attention on the CPU, flash / memory-efficient on CUDA
        "attention": f"{count} fused into com.microsoft.MultiHeadAttention",
    }


class OrtEngine(Engine):
    """An ORT session run through IO binding on the torch tensors' memory (CPU or CUDA: one code
    path). Outputs of static shape live in buffers allocated once and reused by the next call;
    with ``cuda_graph`` inputs are copied into fixed buffers too, so that ORT can replay the
    captured graph."""

    backend = "onnxruntime"

    # ORT captures its CUDA graph after this many plain runs (1 in older releases, 2 in newer);
    # opening runs the engine once more than that, so the capture happens at open, never while
    # a run's video writer thread is allocating or copying (older ORT captures in the global
    # mode, where another thread's cudaMalloc breaks the capture)
    CUDA_GRAPH_WARMUP_RUNS = 3

    def __init__(self, directory: Path, manifest: Manifest, device: torch.device, **options: Any):
        super().__init__(directory, manifest, device)
        # the CUDA graph needs fixed shapes and addresses: static engines only
        self.cuda_graph = (
            bool(manifest.build.get("cuda_graph"))
            and device.type == "cuda"
            and not self.spec.profiles
        )
        self._sess: Any = None  # onnxruntime.InferenceSession once open
        self._stream = 0  # the CUDA stream ORT was given at open (0: its own)

    def _open(self) -> None:
        ort = _ort()
        opts = session_options(ort)
        # The artifact is already optimised at the extended level; the remaining (layout)
        # optimisations are specific to this machine and cheap, so they run at load.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = self.artifact
        if self.device.type == "cuda":
            self._stream = torch.cuda.current_stream(self.device).cuda_stream
        providers = _provider(
            self.device,
            self.cuda_graph,
            fp32=self.manifest.precision == "fp32",
            stream=self._stream,
            dynamic=bool(self.spec.profiles),
        )
        try:
            self._sess = _inference_session(ort, str(path), opts, providers, str(path))
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(
                f"{path} could not be loaded by onnxruntime ({str(exc)[:300]}): the file is "
                f"corrupt or from another onnxruntime; rebuild: {self.manifest.rebuild}"
            ) from exc
        problems = io_mismatches(self.spec, self._sess.get_inputs(), self._sess.get_outputs())
        if problems:
            raise EngineError(
                f"{path} does not have the inputs and outputs its manifest describes "
                f"({'; '.join(problems[:4])}): the manifest belongs to another engine or was "
                f"edited; rebuild: {self.manifest.rebuild}"
            )
        self._run_options = ort.RunOptions()
        if self._stream:  # ordered on the caller's stream: no device-wide syncs needed
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._binding = self._sess.io_binding()
        self._buffers: dict[str, torch.Tensor] = {}
        tensors = list(self.spec.outputs) + (list(self.spec.inputs) if self.cuda_graph else [])
        for t in tensors:
            if all(isinstance(d, int) for d in t.dims):
                self._buffers[t.name] = torch.empty(
                    t.shape({}), dtype=DTYPES[t.dtype], device=self.device
                )
        # every output bound now, in spec (= graph) order: get_outputs() keeps this order, and
        # rebinding a name later replaces it in place
        for t in self.spec.outputs:
            self._bind_output(t.name)
        if self.cuda_graph:
            self._capture_now()

    def _capture_now(self) -> None:
        """Run the engine until ORT has captured its graph (see CUDA_GRAPH_WARMUP_RUNS)."""
        feed = random_feed(self.spec, self.spec.sizes("opt"), device=self.device)
        for _ in range(self.CUDA_GRAPH_WARMUP_RUNS):
            self._infer(feed)

    def _bind_output(self, name: str) -> None:
        if name in self._buffers:
            self._bind(name, self._buffers[name], output=True)
        else:  # dynamic: ORT allocates it once its shape is known
            self._binding.bind_output(name, self.device.type, self.device.index or 0)

    def _bind(self, name: str, value: torch.Tensor, output: bool = False) -> None:
        bind = self._binding.bind_output if output else self._binding.bind_input
        bind(
            name,
            self.device.type,
            self.device.index or 0,
            _NP_DTYPES[value.dtype],
            tuple(value.shape),
            value.data_ptr(),
        )

    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        alive = []  # contiguous copies must outlive the run: ORT only holds their addresses
        for t in self.spec.inputs:
            value = feed[t.name].contiguous()
            if t.name in self._buffers:  # CUDA graph: fixed addresses
                self._buffers[t.name].copy_(value)
                value = self._buffers[t.name]
            alive.append(value)
            self._bind(t.name, value)
        dynamic = [t.name for t in self.spec.outputs if t.name not in self._buffers]
        for name in dynamic:  # a fresh allocation for this call's shape
            self._bind_output(name)
        # On the stream ORT was given (the session's), ORT's work is ordered with torch's;
        # on any other stream only device-wide syncs order it
        ordered = bool(self._stream) and (
            torch.cuda.current_stream(self.device).cuda_stream == self._stream
        )
        if not ordered:
            self._binding.synchronize_inputs()
        self._sess.run_with_iobinding(self._binding, self._run_options if ordered else None)
        if not ordered:
            self._binding.synchronize_outputs()
        del alive
        out = dict(self._buffers)
        if dynamic:  # get_outputs() is in bind order: the spec's (see _open)
            names = [t.name for t in self.spec.outputs]
            values = dict(zip(names, self._binding.get_outputs(), strict=True))
            for name in dynamic:
                out[name] = _to_torch(values[name], self.device)
        return {t.name: out[t.name] for t in self.spec.outputs}

    def _close(self) -> None:
        self._sess = self._binding = None
        self._buffers = {}


class _CudaArray:
    """``__cuda_array_interface__`` over an ORT-owned device buffer (for torch.as_tensor)."""

    _TYPESTR = {"tensor(float)": "<f4", "tensor(float16)": "<f2", "tensor(int64)": "<i8"}

    def __init__(self, value):
        self.__cuda_array_interface__ = {
            "shape": tuple(value.shape()),
            "typestr": self._TYPESTR[value.data_type()],
            "data": (value.data_ptr(), False),
            "version": 3,
        }


def _to_torch(value, device: torch.device) -> torch.Tensor:
    """A torch copy of an ORT-owned output (ORT frees or reuses it on the next run)."""
    if device.type == "cpu":
        return torch.from_numpy(value.numpy())
    return torch.as_tensor(_CudaArray(value), device=device).clone()


ENGINE = OrtEngine
