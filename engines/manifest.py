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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import Hallo2rtError
from .spec import EngineSpec, spec_from_json

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


def read_manifest(directory: str | Path) -> Manifest:
    """``directory/manifest.json`` (any version); ``EngineError`` if absent or unreadable."""
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
    try:
        manifest = Manifest.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError(
            f"{path} is not a manifest this hallo2rt reads ({exc}); rebuild it"
        ) from exc
    written = data.get("spec_digest")
    if written is not None and written != manifest.spec_digest:
        raise EngineError(
            f"{path} was edited after it was written: its spec (the engine's inputs, outputs "
            "and shapes) no longer matches the digest recorded with it, so it may not describe "
            f"the engine file; rebuild: {manifest.rebuild or 'hallo2rt export / hallo2rt build'}"
        )
    return manifest


def stale_fields(manifest: Manifest, env: dict[str, Any]) -> list[str]:
    """The fields of ``env`` that differ from what the engine was built for, as sentences."""
    built_for = manifest.environment
    out = []
    for key in MUST_MATCH.get(manifest.backend or "", ()):
        if built_for.get(key) != env.get(key):
            here = env.get(key)
            out.append(f"{key}: built for {built_for.get(key)!r}, this machine has {here!r}")
    return out


def check_fresh(manifest: Manifest, env: dict[str, Any]) -> None:
    """``StaleEngineError`` naming every differing field and the command that rebuilds."""
    stale = stale_fields(manifest, env)
    if stale:
        raise StaleEngineError(
            f"engine {manifest.engine} cannot run here: " + "; ".join(stale) + ". Rebuild it: "
            f"{manifest.rebuild or 'hallo2rt build ...'}"
        )


# --- the typed manifest -----------------------------------------------------------------------

MANIFEST_VERSION = 2  # 1: untyped dicts, two parity shapes (read and converted)


@dataclass
class ParityRun:
    """One parity check at one input size."""

    sizes: dict[str, int]  # the spec's symbol sizes it ran at ({} for a static engine)
    attention: str  # how the reference ran its attention (ORT fused or as exported)
    outputs: dict[str, dict[str, float]]  # per output: the numbers its gate looks at

    def to_json(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "attention": self.attention, "outputs": self.outputs}


@dataclass
class Parity:
    """What an engine was checked against at export or build, and how close it came: one shape
    for both (docs/architecture.md, "Precision and parity policy")."""

    reference: str  # what the engine's outputs were compared with
    gate: str  # the threshold, in words
    runs: dict[str, ParityRun] = field(default_factory=dict)  # by size: "opt" (and "min")
    skipped: str | None = None  # why no check ran (``build --no-check``); then no runs

    def numbers(self) -> list[dict[str, float]]:
        """Every output's numbers over every run."""
        return [v for run in self.runs.values() for v in run.outputs.values()]

    def summary(self) -> str:
        """The worst number over every output and run, in words (or why nothing ran)."""
        if self.skipped:
            return f"NOT checked ({self.skipped})"
        numbers = self.numbers()
        if numbers and "cosine" in numbers[0]:
            return f"min cosine {min(v['cosine'] for v in numbers):.6f}"
        return f"max rel {max(v['rel'] for v in numbers):.2e}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference": self.reference,
            "gate": self.gate,
            "runs": {k: r.to_json() for k, r in self.runs.items()},
        }
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Parity | None:
        """Reads this shape and the two of manifest version 1 (an export's flat ``outputs``,
        a build's ``results`` per size)."""
        if not data:
            return None
        if "skipped" in data and "runs" not in data:
            return cls("", "", {}, data["skipped"])
        if "runs" in data:
            runs = {k: ParityRun(**r) for k, r in data["runs"].items()}
            return cls(data["reference"], data["gate"], runs, data.get("skipped"))
        if "results" in data:  # version 1, build
            runs = {
                k: ParityRun(r["sizes"], r.get("reference_attention", ""), r["outputs"])
                for k, r in data["results"].items()
            }
            return cls(data["reference"], data["gate"], runs)
        gate = (  # version 1, export
            f"cosine >= {data['min_cosine']}"
            if "min_cosine" in data
            else f"max|diff| <= {data.get('rel_tol')} * max|ref|"
        )
        run = ParityRun({}, data.get("attention", ""), data["outputs"])
        return cls(f"{data['reference']}; {data.get('runtime', '')}", gate, {"opt": run})


# Fields every manifest may carry, with the type a reader gets; the rest (backend-specific
# build facts such as the TensorRT plan settings or ORT's provider) stays in ``extra``.
@dataclass
class Manifest:
    """``manifest.json`` of an exported (``backend`` None) or built engine, typed."""

    engine: str  # the engine's name (docs/architecture.md's table)
    spec: EngineSpec  # the engine's I/O as built
    precision: str  # "fp32" | "fp16": what it computes in
    backend: str | None = None  # "tensorrt" | "onnxruntime" | "torch"; None: an ONNX export
    parity: Parity | None = None  # the check of this stage against the one before
    # export
    onnx_sha256: str | None = None  # the exported graph (and its external data)
    onnx_bytes: int | None = None
    export_seconds: float | None = None
    versions: dict[str, str] = field(default_factory=dict)  # torch, onnx, ORT, opset at export
    shapes: dict[str, int] = field(default_factory=dict)  # GraphShapes of the export
    model_config: dict[str, Any] = field(default_factory=dict)  # ModelConfig of the weights
    checkpoints: str | None = None  # the checkpoint tree the weights came from
    sources: dict[str, str] = field(default_factory=dict)  # component -> weight file
    source_sha256: dict[str, str] = field(default_factory=dict)  # relative file -> sha256
    # build
    build: dict[str, Any] = field(default_factory=dict)  # the BuildConfig, as a dict
    cache_key: str | None = None  # what made these bytes (spec, ONNX, build config, tools)
    onnx: dict[str, str] = field(default_factory=dict)  # path, sha256, precision of the source
    export_parity: Parity | None = None  # the source's own export check
    environment: dict[str, Any] = field(default_factory=dict)  # tools and GPU of the build
    rebuild: str | None = None  # the command that builds this engine again
    artifact: str | None = None  # the built file in the engine directory (None: torch)
    artifact_data: list[str] = field(default_factory=list)  # its external data files
    artifact_bytes: int | None = None
    artifact_sha256: str | None = None
    build_seconds: float | None = None
    total_seconds: float | None = None  # build and check
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific build facts

    @property
    def spec_digest(self) -> str:
        return self.spec.digest()

    @property
    def device(self) -> str:
        """The device a built engine was built for."""
        return str(self.build.get("device", "cpu"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manifest_version": MANIFEST_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                continue
            if isinstance(value, (Parity, EngineSpec)):
                value = value.to_json()
            out[f.name] = value
        out["spec_digest"] = self.spec_digest
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        kw["spec"] = spec_from_json(data["spec"])
        kw["parity"] = Parity.from_json(data.get("parity"))
        kw["export_parity"] = Parity.from_json(data.get("export_parity"))
        skip = known | {"manifest_version", "spec_digest"}
        kw["extra"] = {k: v for k, v in data.items() if k not in skip}
        return cls(**kw)

    def write(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(
            json.dumps(self.to_json(), indent=2, default=str) + "\n"
        )
