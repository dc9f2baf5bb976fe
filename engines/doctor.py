"""``hallo2rt doctor``: what this machine has, which backends actually run here, and the state of
an engine directory.

Backends are proved by running something, not by import alone: a 2x2 matmul in torch, a one-node
ONNX graph in each ONNX Runtime provider, creating a TensorRT builder. Every line is a fact that
was just observed, or says that it could not be.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .engine import check_artifact, verify_artifact
from .manifest import MANIFEST, EngineError, environment, read_manifest, stale_fields
from .spec import ENGINE_NAMES, KNOWN_ENGINES


@dataclass
class Report:
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    backends: dict[str, str] = field(default_factory=dict)  # backend@device -> "ok" or why not
    engines_ok: bool = True  # False when an engine directory was given and one is unusable

    def add(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, lines))

    def text(self) -> str:
        out = []
        for title, lines in self.sections:
            out.append(title)
            out += [f"  {line}" for line in lines]
        return "\n".join(out)


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"
    except Exception as exc:  # a broken install is worth reporting as such
        return f"broken ({type(exc).__name__}: {exc})"


def driver_version() -> str:
    try:
        from cuda.bindings import driver

        err, version = driver.cuDriverGetVersion()
        if int(err) == 0 and version:
            return f"CUDA driver API {version // 1000}.{version % 1000 // 10}"
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if res.returncode == 0 and res.stdout.strip():
                return f"NVIDIA driver {res.stdout.strip().splitlines()[0]}"
        except (OSError, subprocess.SubprocessError):
            pass
    return "no NVIDIA driver found (no cuda-python driver API, no nvidia-smi)"


def _gpus() -> list[str]:
    if not torch.cuda.is_available():
        return ["none visible to torch"]
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, "
            f"{p.total_memory / 2**30:.1f} GiB"
        )
    return out


def _try(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:
        return f"no: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _torch_probe(device: str) -> None:
    x = torch.ones(2, 2, device=device)
    assert float((x @ x).sum()) == 8.0


def _ort_probe(provider: str) -> None:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=[provider])
    if provider not in sess.get_providers():
        raise RuntimeError(f"{provider} fell back to {sess.get_providers()}")
    (y,) = sess.run(None, {"x": np.array([1.0, 2.0], np.float32)})
    assert y.tolist() == [2.0, 4.0]


def _trt_probe() -> None:
    import tensorrt as trt

    if not torch.cuda.is_available():
        raise RuntimeError("tensorrt imports, but torch sees no CUDA GPU")
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    if builder is None:
        raise RuntimeError("trt.Builder could not be created (driver/GPU)")


def probe_backends() -> dict[str, str]:
    """backend@device -> "ok" or the reason it does not run here."""
    out = {"torch@cpu": _try(lambda: _torch_probe("cpu"))}
    out["torch@cuda"] = (
        _try(lambda: _torch_probe("cuda")) if torch.cuda.is_available() else "no: no CUDA GPU"
    )
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = None
    for device, provider in (("cpu", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        key = f"onnxruntime@{device}"
        if providers is None:
            out[key] = "no: onnxruntime not installed"
        elif provider not in providers:
            out[key] = f"no: {provider} not in this onnxruntime ({', '.join(providers)})"
        else:
            out[key] = _try(lambda p=provider: _ort_probe(p))
    out["tensorrt@cuda"] = _try(_trt_probe)
    return out


def engine_states(directory: Path, verify: bool = False) -> tuple[list[str], bool]:
    """One line per engine in ``directory``; whether all of them are usable here."""
    if not directory.is_dir():
        return [f"{directory} does not exist"], False
    lines, ok = [], True
    names = [n for n in KNOWN_ENGINES if (directory / n).is_dir()]
    names += sorted(
        p.name
        for p in directory.iterdir()
        if p.is_dir() and p.name not in names and not p.name.startswith(".")
    )
    partial = sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))
    if not names:
        return [f"{directory} holds no engines (no <engine>/{MANIFEST})"], False
    for name in names:
        state, good = _engine_state(directory / name, verify)
        ok &= good
        lines.append(f"{name}: {state}")
    lines += [f"{p}: an interrupted build or export (safe to delete)" for p in partial]
    missing = [n for n in ENGINE_NAMES if n not in names]
    if missing:
        lines.append(f"not present: {', '.join(missing)}")
    return lines, ok


def _engine_state(path: Path, verify: bool) -> tuple[str, bool]:
    try:
        m = read_manifest(path)
    except EngineError as exc:
        return f"unusable: {exc}", False
    backend = m.backend
    if backend is None:
        return (
            f"ONNX export, {m.precision}: NOT BUILT, so nothing can run it; build it: hallo2rt "
            f"build --onnx {path.parent} --out ENGINES --backend onnxruntime|tensorrt|torch",
            False,
        )
    env_built = m.environment
    what = (
        f"{backend} {m.precision} on {m.device}, built with "
        + ", ".join(
            f"{k} {env_built.get(k)}"
            for k in ("torch", "onnxruntime", "tensorrt")
            if env_built.get(k)
        )
        + (
            f" for {env_built['gpu']} (cc {env_built.get('compute_capability')})"
            if env_built.get("gpu")
            else ""
        )
    )
    try:
        if verify:
            verify_artifact(path, m)
        else:  # hashed when the files changed since their last check
            check_artifact(path, m)
    except EngineError as exc:
        return f"{what}; CORRUPT: {exc}", False
    stale = stale_fields(m, environment(m.device, backend))
    if stale:
        return f"{what}; STALE here ({'; '.join(stale)}); rebuild: {m.rebuild}", False
    checked = "not checked" if m.parity is None or m.parity.skipped else "checked against its ONNX"
    return f"{what}; ok ({checked})", True


def doctor(engines: str | Path | None = None, verify: bool = False) -> Report:
    """Everything ``hallo2rt doctor`` prints (a Report, so that tests can read it)."""
    r = Report()
    r.add("Python", [f"{platform.python_version()} ({platform.platform()})"])
    r.add(
        "Packages",
        [
            f"{m}: {_version(m)}"
            for m in ("torch", "onnx", "onnxruntime", "tensorrt", "polygraphy", "av", "numpy")
        ],
    )
    try:
        import onnxruntime as ort

        providers = ", ".join(ort.get_available_providers())
    except ImportError:
        providers = "onnxruntime not installed"
    r.add("ONNX Runtime providers", [providers])
    r.add(
        "CUDA",
        [
            f"torch built with CUDA {torch.version.cuda}"
            if torch.version.cuda
            else "torch is a CPU-only build",
            driver_version(),
        ],
    )
    r.add("GPUs", _gpus())
    r.backends = probe_backends()
    r.add("Backends that run here", [f"{k}: {v}" for k, v in r.backends.items()])
    if engines is not None:
        lines, r.engines_ok = engine_states(Path(engines), verify)
        r.add(f"Engines in {engines}", lines)
    return r
