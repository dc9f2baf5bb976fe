"""Engine directories describe themselves (docs/style.md §9; docs/architecture.md, "Engine cache
and manifest").

An engine directory holds, per engine, ``<name>/manifest.json`` beside the artifact. This module
reads and checks manifests, collects the facts of the machine a build ran on (tool versions, GPU),
derives the cache key, and refuses an engine built for another TensorRT/ONNX Runtime or GPU with
an error naming the field and the command that rebuilds it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .errors import Hallo2rtError

MANIFEST = "manifest.json"

# Facts of the running machine that an engine of each backend depends on: an engine whose
# manifest disagrees on one of them must be rebuilt (a TensorRT plan is specific to the
# TensorRT version and the GPU; an ORT-optimised graph to the ORT version and provider).
MUST_MATCH = {
    "tensorrt": ("tensorrt", "gpu", "compute_capability"),
    "onnxruntime": ("onnxruntime",),
    "torch": (),
}


class EngineError(Hallo2rtError, RuntimeError):
    """An engine directory or artifact cannot be used; the message says why and what to do."""


class StaleEngineError(EngineError):
    """An engine was built for another tool version or GPU than the one running."""


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One hash over the bytes of ``paths`` (those that exist), in order."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(functools.partial(f.read, 1 << 24), b""):
                    h.update(block)
    return h.hexdigest()


def onnx_sha256(path: Path) -> str:
    """Hash of an ONNX graph and, when present, its external data file (``<name>.data``)."""
    return sha256_files([path, path.with_name(path.name + ".data")])


def _gpu_facts(device: str) -> dict[str, str | None]:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {"gpu": None, "compute_capability": None}
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def environment(device: str = "cpu", backend: str | None = None) -> dict[str, Any]:
    """Versions and GPU facts of this machine (what a manifest records and an open checks).

    Heavy optional packages are only imported for the backend that needs them.
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        **_gpu_facts(device),
    }
    for module in ("onnx", "onnxruntime") + (("tensorrt",) if backend == "tensorrt" else ()):
        env[module] = _version(module)
    return env


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or a broken install: the doctor reports which
        return None


def cache_key(spec_digest: str, onnx_sha256: str, build: dict, env: dict) -> str:
    """What makes engine bytes: the spec, the ONNX, the build config and, for the backend,
    the tool version and GPU. A change in any of them changes the key."""
    pinned = {k: env.get(k) for k in MUST_MATCH[build["backend"]]}
    blob = json.dumps([spec_digest, onnx_sha256, build, pinned], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """``directory/manifest.json`` as a dict; ``EngineError`` if absent or unreadable."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise EngineError(
            f"{directory} has no {MANIFEST}: it is not an exported or built engine (make one "
            "with `hallo2rt export` and `hallo2rt build`)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path} is corrupt ({exc}); rebuild the engine") from exc
    if not isinstance(data, dict) or "spec" not in data or "engine" not in data:
        raise EngineError(f"{path} is not an engine manifest (no engine/spec); rebuild it")
    return data


def stale_fields(manifest: dict[str, Any], env: dict[str, Any]) -> list[str]:
    """The fields of ``env`` that differ from what the engine was built for, as sentences."""
    built_for = manifest.get("environment", {})
    out = []
    for key in MUST_MATCH.get(manifest.get("backend", ""), ()):
        if built_for.get(key) != env.get(key):
            here = env.get(key)
            out.append(f"{key}: built for {built_for.get(key)!r}, this machine has {here!r}")
    return out


def check_fresh(manifest: dict[str, Any], env: dict[str, Any]) -> None:
    """``StaleEngineError`` naming every differing field and the command that rebuilds."""
    stale = stale_fields(manifest, env)
    if stale:
        raise StaleEngineError(
            f"engine {manifest['engine']} cannot run here: " + "; ".join(stale) + ". Rebuild it: "
            f"{manifest.get('rebuild', 'hallo2rt build ...')}"
        )
