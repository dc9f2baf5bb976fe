"""The GPU settings of each backend, checked on the CPU against stand-ins of the APIs they call
(GPU_REVIEW findings; each test fails against the code before its fix). Nothing here runs a GPU:
the real runs are ``hallo2rt proof`` and the tests marked ``gpu`` / ``tensorrt``."""

from __future__ import annotations

import types

import pytest
import torch

from hallo2rt.engines import ort_backend, tensorrt_backend
from hallo2rt.engines.build import BuildConfig, build_engines
from hallo2rt.engines.engine import open_engine
from hallo2rt.engines.manifest import EngineError, Manifest
from hallo2rt.engines.tensorrt_backend import build_plan, has_weak_typing
from hallo2rt.engines.torch_backend import TorchEngine, ieee_fp32

ort = pytest.importorskip("onnxruntime")

# BuilderFlag members of TensorRT 10.x (docs) and what 11.x keeps: NVIDIA's 10.x -> 11.x Python
# migration page lists FP16, INT8, FP8, BF16, INT4, FP4, OBEY/PREFER_PRECISION_CONSTRAINTS and
# DIRECT_IO as removed
TRT10_FLAGS = (
    "FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "DEBUG", "GPU_FALLBACK", "REFIT",
    "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE",
    "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO",
    "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
    "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "WEIGHT_STREAMING",
    "REFIT_IDENTICAL", "STRIP_PLAN", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY",
    "EDITABLE_TIMING_CACHE",
)  # fmt: skip
TRT11_REMOVED = {
    "FP16", "INT8", "FP8", "BF16", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO",
}  # fmt: skip
TRT11_FLAGS = tuple(f for f in TRT10_FLAGS if f not in TRT11_REMOVED)


def fake_trt(version: str) -> types.SimpleNamespace:
    """The parts of the tensorrt module the build and run paths touch, as 10.x or 11.x has them."""
    flags = TRT10_FLAGS if version.startswith("10.") else TRT11_FLAGS
    return types.SimpleNamespace(
        __version__=version,
        BuilderFlag=types.SimpleNamespace(**{f: f for f in flags}),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        DataType=types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT64="INT64"),
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
    )


def _export(tiny_onnx, name):
    return tiny_onnx[0] / name / "model.onnx", tiny_onnx[1][name]


# --- TensorRT build ------------------------------------------------------------------------


def test_weak_typing_is_detected_from_the_flag_set():
    assert has_weak_typing(fake_trt("10.13.0.35")) and not has_weak_typing(fake_trt("11.1.0"))


def test_trt11_refuses_fp16_on_an_fp32_export_and_says_what_to_do(tiny_onnx):
    spec = tiny_onnx[1]["vae_decoder"].spec
    cfg = BuildConfig("tensorrt", "cuda", fp16=True)
    assert build_plan(spec, cfg, "fp32", "9.0", weak_typing=True).flags == ("FP16",)
    with pytest.raises(ValueError, match=r"--fp16 on an fp32 export .*--precision fp16"):
        build_plan(spec, cfg, "fp32", "9.0", weak_typing=False)
    fp16 = build_plan(spec, BuildConfig("tensorrt", "cuda"), "fp16", "9.0", weak_typing=False)
    assert fp16.strongly_typed and fp16.flags == () and fp16.precision == "fp16"
    fp8 = BuildConfig("tensorrt", "cuda", fp8=True)
    with pytest.raises(ValueError, match="--fp8"):
        build_plan(spec, fp8, "fp32", "9.0", weak_typing=False)


@pytest.fixture
def built_with(monkeypatch, tmp_path):
    """build() on a stand-in tensorrt module; Polygraphy's real loaders are made, and the
    engine build itself (which needs TensorRT) records what it was given."""
    poly = pytest.importorskip("polygraphy.backend.trt")
    calls = {}

    def fake_build(network, config, save_timing_cache=None):
        calls.update(network=network, config=config, cache=save_timing_cache)
        return b"PLAN"

    monkeypatch.setattr(poly, "engine_bytes_from_network", fake_build)

    def run(version, onnx, export, cfg, timing_cache=None):
        monkeypatch.setattr(tensorrt_backend, "_trt", lambda: fake_trt(version))
        out = tmp_path / version
        out.mkdir()
        env = {"compute_capability": "9.0"}
        fields = tensorrt_backend.build(onnx, export, out, cfg, env, timing_cache, None)
        assert (out / fields["artifact"]).read_bytes() == b"PLAN"
        return fields, calls

    return run


@pytest.mark.parametrize("version", ["10.13.0.35", "11.1.0"])
def test_trt_build_settings_through_polygraphy(built_with, tiny_onnx, tmp_path, version):
    onnx, export = _export(tiny_onnx, "reference_unet")  # dynamic rows: one profile
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"")
    cfg = BuildConfig("tensorrt", "cuda", workspace_gb=2)
    fields, calls = built_with(version, onnx, export, cfg, cache)
    network, config = calls["network"], calls["config"]
    assert network.path == str(onnx) and network.strongly_typed
    assert config.tf32 is False and not (config.fp16 or config.int8 or config.fp8)
    assert config.memory_pool_limits == {"WORKSPACE": 2 << 30}
    assert config.timing_cache_path == str(cache) and calls["cache"] == str(cache)
    rows = export.spec.profiles["rows"]
    (profile,) = config.profiles
    assert profile["latents"].min[0] == rows[0] and profile["latents"].max[0] == rows[2]
    assert fields["artifact"] == f"model.trt{version}.plan" and fields["precision"] == "fp32"


def test_trt10_builds_fp16_weakly_typed_and_trt11_refuses(built_with, tiny_onnx):
    onnx, export = _export(tiny_onnx, "vae_decoder")
    cfg = BuildConfig("tensorrt", "cuda", fp16=True)
    fields, calls = built_with("10.13.0.35", onnx, export, cfg)
    assert calls["config"].fp16 and not calls["network"].strongly_typed
    assert fields["precision"] == "fp16"
    with pytest.raises(ValueError, match="export --precision fp16"):
        built_with("11.1.0", onnx, export, cfg)


# --- TensorRT run --------------------------------------------------------------------------


class FakeContext:
    def __init__(self, accept: bool = True):
        self.accept, self.addresses, self.shapes = accept, {}, {}

    def set_tensor_address(self, name, ptr):
        if self.accept:
            self.addresses[name] = ptr
        return self.accept

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return self.accept


def _trt_engine(tiny_onnx, name, context):
    export = tiny_onnx[1][name]
    manifest = Manifest(name, export.spec, "fp32", rebuild="hallo2rt build ...")
    engine = tensorrt_backend.TensorRTEngine(tiny_onnx[0], manifest, torch.device("cpu"))
    engine._context, engine._bound, engine._outputs = context, {}, {}
    engine._static, engine._warned_default_stream = not engine.spec.profiles, False
    return engine


def test_a_refused_tensor_address_is_an_error_not_a_stale_pointer(tiny_onnx):
    engine = _trt_engine(tiny_onnx, "image_proj", FakeContext(accept=False))
    with pytest.raises(EngineError, match="refused the address of image_proj.embedding"):
        engine._set_address("embedding", torch.zeros(3))
    ok = _trt_engine(tiny_onnx, "image_proj", FakeContext())
    t = torch.zeros(3)
    ok._set_address("embedding", t)
    assert ok._context.addresses == {"embedding": t.data_ptr()}


def test_a_refused_input_shape_is_an_error(tiny_onnx):
    engine = _trt_engine(tiny_onnx, "vae_encoder", FakeContext(accept=False))
    feed = {"pixels": torch.zeros(engine.spec.inputs[0].shape(engine.spec.sizes("min")))}
    with pytest.raises(EngineError, match="refused shape"):
        engine._infer(feed)


def test_plan_dtypes_must_equal_the_spec(tiny_onnx):
    engine = _trt_engine(tiny_onnx, "image_proj", FakeContext())
    names = [t.name for t in engine.spec.inputs + engine.spec.outputs]
    dtypes = {n: "FLOAT" for n in names}

    class Plan:
        num_io_tensors = len(names)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, n):
            return "INPUT" if n == "embedding" else "OUTPUT"

        def get_tensor_dtype(self, n):
            return dtypes[n]

    engine._engine = Plan()
    engine._check_io(fake_trt("10.13.0.35"))
    dtypes[names[-1]] = "HALF"
    with pytest.raises(EngineError, match=f"{names[-1]} is HALF in the plan, float32"):
        engine._check_io(fake_trt("10.13.0.35"))


# --- ONNX Runtime --------------------------------------------------------------------------


def test_cuda_provider_options():
    cuda = torch.device("cuda:1")
    ((name, fp32),) = ort_backend._provider(cuda, fp32=True, stream=0)
    assert name == "CUDAExecutionProvider" and fp32["device_id"] == "1"
    assert fp32["use_tf32"] == "0"  # ORT's default is TF32 on: over the 1e-4 fp32 gate
    assert "user_compute_stream" not in fp32  # ORT ignores 0 and would use its own stream
    assert "enable_cuda_graph" not in fp32 and "cudnn_conv_algo_search" not in fp32
    ((_, fp16),) = ort_backend._provider(cuda, cuda_graph=True, fp32=False, stream=1234)
    assert "use_tf32" not in fp16 and fp16["user_compute_stream"] == "1234"
    assert fp16["enable_cuda_graph"] == "1"
    ((_, dyn),) = ort_backend._provider(cuda, dynamic=True)
    assert dyn["cudnn_conv_algo_search"] == "HEURISTIC"
    assert ort_backend._provider(torch.device("cpu"), cuda_graph=True) == ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def ort_small(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort_small")
    build_engines(tiny_onnx[0], out, BuildConfig("onnxruntime"), only=["image_proj", "vae_encoder"])
    return out


def test_ort_cuda_graphs_only_for_static_engines(ort_small):
    for name, static in (("image_proj", True), ("vae_encoder", False)):
        engine = open_engine(ort_small / name)
        engine.manifest.build["cuda_graph"] = True
        again = type(engine)(engine.directory, engine.manifest, torch.device("cuda"))
        assert again.cuda_graph is static, name


def test_the_silent_cpu_fallback_of_the_cuda_provider_is_an_error(ort_small):
    """This machine's onnxruntime has no CUDA provider: asked for one, ORT warns and runs on
    the CPU, exactly what a broken CUDA install does."""
    path = str(ort_small / "image_proj" / ort_backend.ARTIFACT)
    providers = ort_backend._provider(torch.device("cuda"))
    opts = ort_backend.session_options(ort)
    with (
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),  # all that ORT itself says
        pytest.raises(EngineError, match="could not start its CUDA provider"),
    ):
        ort_backend._inference_session(ort, path, opts, providers, path)
    cpu = ort_backend._inference_session(ort, path, opts, ["CPUExecutionProvider"], path)
    assert cpu.get_providers() == ["CPUExecutionProvider"]


def test_an_ort_cuda_graph_is_captured_while_the_engine_opens(ort_small, monkeypatch):
    """ORT captures after a few plain runs; opening runs them, so no capture can coincide with
    a run's writer thread. (On the CPU the same runs go through the fixed input buffers.)"""
    runs = []
    real = ort_backend._inference_session

    def counting(*args):
        sess = real(*args)
        run = sess.run_with_iobinding
        sess_proxy = types.SimpleNamespace(
            run_with_iobinding=lambda *a: (runs.append(1), run(*a))[1],
            io_binding=sess.io_binding,
            get_providers=sess.get_providers,
            get_inputs=sess.get_inputs,
            get_outputs=sess.get_outputs,
        )
        return sess_proxy

    monkeypatch.setattr(ort_backend, "_inference_session", counting)
    engine = open_engine(ort_small / "image_proj")
    engine.cuda_graph = True  # as on a GPU with --cuda-graph
    with engine:
        assert len(runs) == engine.CUDA_GRAPH_WARMUP_RUNS
        feed = {"embedding": torch.randn(engine.spec.inputs[0].dims)}
        want = {k: v.clone() for k, v in engine.infer(feed).items()}
    with open_engine(ort_small / "image_proj") as plain:
        got = plain.infer(feed)
    assert all(torch.equal(want[k], got[k]) for k in want)


# --- torch ---------------------------------------------------------------------------------


def test_fp32_torch_engines_on_cuda_run_without_tf32():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cudnn.conv.fp32_precision)
            return (x,)

    before = torch.backends.cudnn.conv.fp32_precision
    with ieee_fp32():
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == before
    from hallo2rt.engines.spec import EngineSpec, TensorSpec

    spec = EngineSpec("x", (TensorSpec("x", "float32", (2,)),), (TensorSpec("y", "float32", (2,)),))
    for precision, device, want in (("fp32", "cuda", "ieee"), ("fp16", "cuda", before)):
        graph = types.SimpleNamespace(spec=spec, module=Probe())
        engine = TorchEngine.from_graph(graph, torch.device(device), precision)
        engine._module = Probe()  # as opened (no GPU here to move it to)
        engine._infer({"x": torch.zeros(2)})
        assert seen[-1] == want, precision
