"""One ``Engine`` interface over TensorRT, ONNX Runtime and PyTorch (docs/architecture.md,
"Backends").

An engine is a context manager; ``infer(feed)`` takes a dict of tensors on the engine's device
(validated against the spec) and returns a dict of output tensors. Outputs may live in buffers the
next call reuses: copy what you keep. Public methods check state and inputs; each backend
implements three hooks (``_open``, ``_infer``, ``_close``) and a ``build`` function, in its own
module, imported only when used (docs/style.md §5-6).

``open_engine(directory)`` reads the manifest a build wrote, refuses a stale or corrupt engine with
a message that says how to rebuild (the artifact's hash is checked whenever its files changed since
the last check), and returns the backend's engine, unopened.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .errors import FeedError, OptionError
from .manifest import (
    EngineError,
    Manifest,
    StaleEngineError,
    check_fresh,
    environment,
    read_manifest,
    sha256_files,
)
from .spec import EngineSpec

log = logging.getLogger(__name__)

# backend name -> module defining ``build(...)`` and ``ENGINE`` (the Engine subclass)
BACKENDS = {
    "onnxruntime": "hallo2rt.engines.ort_backend",
    "tensorrt": "hallo2rt.engines.tensorrt_backend",
    "torch": "hallo2rt.engines.torch_backend",
}


def backend_module(name: str):
    """The module of backend ``name`` (imported now; it imports its own heavy packages)."""
    if name not in BACKENDS:
        raise OptionError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


class Engine:
    """Base class: state and feed checks; backends implement ``_open/_infer/_close``."""

    backend = ""

    def __init__(self, directory: Path, manifest: Manifest, device: torch.device):
        self.directory, self.manifest, self.device = Path(directory), manifest, device
        self.spec: EngineSpec = manifest.spec
        self._opened = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def artifact(self) -> Path:
        """The built file this engine loads (TensorRT plan, ORT model)."""
        if not self.manifest.artifact:
            raise EngineError(
                f"{self.directory}: the manifest names no artifact; rebuild: "
                f"{self.manifest.rebuild}"
            )
        return self.directory / self.manifest.artifact

    def open(self) -> Engine:
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def __enter__(self) -> Engine:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run once. ``feed``: every spec input, on ``self.device``, with the spec's dtypes and
        shapes. Returns every spec output by name."""
        if not self._opened:
            raise RuntimeError(f"engine {self.name} is not open: use it as a context manager")
        self.spec.validate_feed(feed)
        wrong = [k for k, v in feed.items() if v.device.type != self.device.type]
        if wrong:
            raise FeedError(
                f"engine {self.name} runs on {self.device}; inputs {sorted(wrong)} are elsewhere"
            )
        return self._infer(feed)

    # backend hooks
    def _open(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


def artifact_files(directory: Path, manifest: Manifest) -> list[Path]:
    """The artifact and its data files, as the manifest names them (empty for torch)."""
    if not manifest.artifact:
        return []
    names = [manifest.artifact, *manifest.artifact_data]
    return [Path(directory) / n for n in names]


def artifact_path(directory: Path, manifest: Manifest) -> Path | None:
    """The built artifact (None for the torch backend, whose weights are the checkpoints);
    ``EngineError`` when it is missing or its size or hash says it is not what was built."""
    files = artifact_files(directory, manifest)
    if not files:
        return None
    path = files[0]
    if not path.is_file():
        raise EngineError(f"{path} is missing; rebuild: {manifest.rebuild or 'hallo2rt build ...'}")
    size = sum(f.stat().st_size for f in files if f.is_file())
    if manifest.artifact_bytes is not None and size != manifest.artifact_bytes:
        raise EngineError(
            f"{path} is corrupt or truncated ({size} bytes, the build wrote "
            f"{manifest.artifact_bytes}); rebuild: {manifest.rebuild}"
        )
    return path


def verify_artifact(directory: Path, manifest: Manifest) -> None:
    """Full hash check of the artifact against the manifest (slow for GB-sized engines)."""
    path = artifact_path(directory, manifest)
    if path is None:
        return
    if sha256_files(artifact_files(directory, manifest)) != manifest.artifact_sha256:
        raise EngineError(
            f"{path} does not match the hash its build recorded: it is corrupt or was "
            f"replaced; rebuild: {manifest.rebuild}"
        )


def rebuild_for(manifest: Manifest, device: str) -> str:
    """The manifest's rebuild command with ``--device`` set to ``device``."""
    command = manifest.rebuild or "hallo2rt build --onnx EXPORTS --out ENGINES"
    built = f"--device {manifest.device}"
    if built in command:
        return command.replace(built, f"--device {device}")
    return f"{command} --device {device}"


VERIFIED = ".verified.json"  # the artifact files' identity when their hash last matched


def _identity(files: list[Path]) -> list[list]:
    """What changes when a file is rewritten, even in place at the same size."""
    out = []
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def _note(directory: Path, manifest: Manifest) -> dict[str, Any]:
    """The recorded hash and the present identity of the artifact's files."""
    files = [f for f in artifact_files(directory, manifest) if f.is_file()]
    return {"sha256": manifest.artifact_sha256, "files": _identity(files)}


def record_verified(directory: Path, manifest: Manifest) -> None:
    """Note that the artifact in ``directory`` matches its recorded hash now (after a build or
    a full check), so that the next open can skip hashing gigabytes while the files are
    untouched. A read-only engine folder keeps no note: it is hashed at every open."""
    try:
        (Path(directory) / VERIFIED).write_text(json.dumps(_note(directory, manifest)))
    except OSError:
        log.debug("could not write %s in %s", VERIFIED, directory, exc_info=True)


def check_artifact(directory: Path, manifest: Manifest) -> Path | None:
    """``artifact_path``, and the full hash check unless the files are exactly as they were
    when their hash last matched (same size, modification time and inode): a file corrupted
    in place, even at the same size, is refused instead of producing garbage."""
    path = artifact_path(directory, manifest)
    if path is None or manifest.artifact_sha256 is None:
        return path
    try:
        if json.loads((Path(directory) / VERIFIED).read_text()) == _note(directory, manifest):
            return path
    except (OSError, ValueError):
        pass
    log.info("checking the hash of %s (changed since its last check)", path)
    verify_artifact(directory, manifest)
    record_verified(directory, manifest)
    return path


def open_engine(
    directory: str | Path,
    device: str | torch.device | None = None,
    expect: EngineSpec | None = None,
    **options: Any,
) -> Engine:
    """The engine built in ``directory`` (unopened: use ``with``).

    device: defaults to the device it was built for. expect: the spec the caller was written
    for; a different one means the engine comes from other code and must be rebuilt.
    options: backend-specific (tensorrt: ``memory_pool``).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    backend = manifest.backend
    if backend is None:
        raise EngineError(
            f"{directory} is an ONNX export, not a built engine; build it: hallo2rt build "
            f"--onnx {directory.parent} --out ENGINES --backend onnxruntime|tensorrt|torch"
        )
    built_on = torch.device(manifest.device)
    device = torch.device(device or built_on)
    if backend != "torch" and device.type != built_on.type:
        raise StaleEngineError(
            f"engine {manifest.engine} was built for {built_on.type}, not {device.type} "
            f"({backend} engines are device-specific); rebuild it for {device.type}: "
            f"{rebuild_for(manifest, device.type)}"
        )
    check_fresh(manifest, environment(str(device), backend))
    if expect is not None and manifest.spec_digest != expect.digest():
        raise EngineError(
            f"engine {expect.name} in {directory} was built from another spec than this "
            f"version of hallo2rt expects; re-export and rebuild: {manifest.rebuild}"
        )
    check_artifact(directory, manifest)
    return backend_module(backend).ENGINE(directory, manifest, device, **options)
