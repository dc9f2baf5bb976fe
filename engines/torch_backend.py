"""The torch backend: the export wrappers themselves, in eager mode (optionally
``torch.compile``). It is the reference and the fallback; its "artifact" is the checkpoint tree
the export came from, checked against the hashes the export recorded. This is the one backend
that reaches into ``hallo2rt.export`` (imported lazily, docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from .engine import Engine
from .manifest import EngineError, Manifest, sha256_files
from .spec import FP32_ONLY

log = logging.getLogger(__name__)


def check_available(config, env: dict[str, Any]) -> None:
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("--device cuda: torch sees no CUDA GPU here; use --device cpu")


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, per process


def _digest(path: Path) -> str | None:
    """sha256 of a weight file, hashed once per process (net.pth is ~10 GB)."""
    if not path.is_file():
        return None
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_files([path])
    return _DIGESTS[key]


def _checkpoints(manifest: Manifest, override: str | Path | None) -> Path:
    """The checkpoint tree, verified against the hashes the export recorded."""
    root = Path(override or manifest.checkpoints or "")
    if not root.is_dir():
        raise EngineError(
            f"the torch backend needs the checkpoint tree the ONNX was exported from "
            f"({manifest.checkpoints!r} is not a directory): pass --checkpoints DIR"
        )
    recorded = manifest.source_sha256
    for relative, digest in recorded.items():
        path = root / relative
        if _digest(path) != digest:
            raise EngineError(
                f"{path} is not the file {manifest.engine} was exported from (hash differs "
                "or missing): pass the original tree with --checkpoints, or re-export"
            )
    return root


def build(onnx: Path, export: Manifest, out: Path, config, env, timing_cache, checkpoints) -> dict:
    """Nothing to compile ahead of time: verify the weights and record where they are."""

    root = _checkpoints(export, checkpoints)
    precision = "fp16" if config.fp16 and export.engine not in FP32_ONLY else "fp32"
    return {
        "precision": precision,
        "artifact": None,
        "checkpoints": str(root.resolve()),
        "spec": export.spec.with_precision(precision),
    }


# (backend object, attribute, value that means "no TF32") in torch's new and legacy APIs; never
# both (torch refuses to read flags set through a mix of the two)
_IEEE_NEW = (
    (lambda: torch.backends.cudnn.conv, "fp32_precision", "ieee"),  # type: ignore[attr-defined]
    (lambda: torch.backends.cuda.matmul, "fp32_precision", "ieee"),
)
_IEEE_LEGACY = (
    (lambda: torch.backends.cudnn, "allow_tf32", False),
    (lambda: torch.backends.cuda.matmul, "allow_tf32", False),
)


def _tf32_switches():
    new = hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")
    return _IEEE_NEW if new else _IEEE_LEGACY


@contextlib.contextmanager
def ieee_fp32():
    """fp32 convolutions and matmuls without TF32 while the block runs (torch turns TF32 on for
    cuDNN convolutions by default: ~1e-3 relative error, over the 1e-4 gate of fp32 engines);
    the previous settings come back after."""
    switches = [(get(), attr, value) for get, attr, value in _tf32_switches()]
    saved = [getattr(obj, attr) for obj, attr, _ in switches]
    try:
        for obj, attr, value in switches:
            setattr(obj, attr, value)
        yield
    finally:
        for (obj, attr, _), old in zip(switches, saved, strict=True):
            setattr(obj, attr, old)


class TorchEngine(Engine):
    """The wrapper module of ``hallo2rt.export.graphs`` on ``device``."""

    backend = "torch"

    def __init__(self, directory: Path, manifest: Manifest, device: torch.device, **options: Any):
        super().__init__(directory, manifest, device)
        self.checkpoints = options.get("checkpoints")
        self._given = options.get("module")  # an already-loaded wrapper (from_graph)
        self._module: Any = None

    @classmethod
    def from_graph(cls, graph, device: torch.device, precision: str = "fp32") -> TorchEngine:
        """An engine over an in-memory export wrapper (``hallo2rt generate --checkpoints``)."""
        spec = graph.spec.with_precision(precision)
        manifest = Manifest(
            engine=spec.name,
            spec=spec,
            precision=precision,
            backend="torch",
            build={"backend": "torch", "device": str(device), "compile": False},
        )
        return cls(Path("."), manifest, torch.device(device), module=graph.module)

    def _open(self) -> None:
        if self._given is not None:
            dtype = torch.float16 if self.manifest.precision == "fp16" else torch.float32
            self._module = self._given.to(self.device, dtype).eval()
            return
        from hallo2rt.export.checkpoints import load_pretrained
        from hallo2rt.export.graphs import ENGINE_COMPONENTS, GraphShapes, build_graph

        root = _checkpoints(self.manifest, self.checkpoints)
        pre = load_pretrained(root, ENGINE_COMPONENTS[self.name])
        graph = build_graph(self.name, pre, GraphShapes(**self.manifest.shapes))
        dtype = torch.float16 if self.manifest.precision == "fp16" else torch.float32
        module = graph.module.to(self.device, dtype).eval()
        compiled = self.manifest.build.get("compile")
        self._module = torch.compile(module) if compiled else module

    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fp32_cuda = self.device.type == "cuda" and self.manifest.precision == "fp32"
        with torch.inference_mode(), ieee_fp32() if fp32_cuda else contextlib.nullcontext():
            outs = self._module(*(feed[t.name] for t in self.spec.inputs))
        return {t.name: o for t, o in zip(self.spec.outputs, outs, strict=True)}

    def _close(self) -> None:
        self._module = None


ENGINE = TorchEngine
