"""``hallo2rt build``: exported ONNX graphs -> engines of one backend, each checked and described.

``build_engines(onnx_dir, out_dir, BuildConfig(...))`` per engine: verifies the export (manifest
present, ONNX bytes equal to the hash the export recorded), lets the backend build its artifact
in ``out_dir/.<name>.partial``, opens the built engine and runs it against the ONNX graph in ONNX
Runtime (CPU, no graph optimisation: the plainest reading of the graph) on random inputs at the
spec's opt sizes (and min sizes where the spec has symbols), then writes ``manifest.json`` and
renames the directory into place. A failure leaves no ``out_dir/<name>``.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .engine import Engine, artifact_files, backend_module, record_verified
from .errors import OptionError
from .manifest import (
    MANIFEST,
    EngineError,
    Manifest,
    Parity,
    ParityRun,
    cache_key,
    environment,
    onnx_sha256,
    read_manifest,
    sha256_files,
)
from .parity import FP16_MIN_COSINE, compare_fp16, compare_fp32
from .paths import output_folder
from .spec import DTYPES, KNOWN_ENGINES, EngineSpec, random_feed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """What changes an engine's bytes (hashed into its cache key, docs/style.md §7)."""

    backend: str  # "onnxruntime" | "tensorrt" | "torch"
    device: str = "cpu"  # "cpu" or "cuda[:N]": where the engine runs (tensorrt: cuda only)
    fp16: bool = False  # tensorrt: fp16 kernels; torch: half weights; onnxruntime: the
    # precision is the export's (`hallo2rt export --precision fp16`), this only asserts it
    int8: bool = False  # tensorrt: allow int8 kernels (takes effect on Q/DQ-quantised graphs)
    fp8: bool = False  # tensorrt: allow fp8 kernels (compute capability >= 8.9, Q/DQ graphs)
    workspace_gb: float = 0.0  # tensorrt: workspace pool limit in GiB (0: TensorRT's default)
    cuda_graph: bool = False  # onnxruntime on cuda: replay static engines as CUDA graphs
    compile: bool = False  # torch: torch.compile the wrappers

    def __post_init__(self) -> None:
        if self.backend not in ("onnxruntime", "tensorrt", "torch"):
            raise OptionError(
                f"BuildConfig.backend = {self.backend!r}: expected onnxruntime, tensorrt or torch"
            )
        kind = self.device.split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise OptionError(f"BuildConfig.device = {self.device!r}: expected cpu or cuda[:N]")
        problems = []
        if self.backend == "tensorrt" and kind != "cuda":
            problems.append("tensorrt engines run on a GPU: use --device cuda")
        if self.backend != "tensorrt" and (self.int8 or self.fp8):
            problems.append("int8/fp8 are TensorRT builder flags: use --backend tensorrt")
        if self.cuda_graph and (self.backend != "onnxruntime" or kind != "cuda"):
            problems.append("--cuda-graph is the onnxruntime CUDA provider's option")
        if self.compile and self.backend != "torch":
            problems.append("--compile applies to the torch backend")
        if self.fp16 and self.backend == "torch" and kind == "cpu":
            problems.append("fp16 torch engines need a GPU (CPU fp16 convolutions crawl)")
        if self.workspace_gb < 0:
            problems.append(f"workspace_gb = {self.workspace_gb} must be >= 0")
        if problems:
            raise OptionError("BuildConfig: " + "; ".join(problems))

    def flags(self) -> str:
        """The CLI flags that reproduce this config (for the rebuild hint)."""
        out = [f"--backend {self.backend}", f"--device {self.device}"]
        out += [
            f"--{f.replace('_', '-')}"
            for f in ("fp16", "int8", "fp8", "cuda_graph", "compile")
            if getattr(self, f)
        ]
        if self.workspace_gb:
            out.append(f"--workspace {self.workspace_gb:g}")
        return " ".join(out)


def exported_engines(onnx_dir: Path, only: Iterable[str] | None = None) -> list[str]:
    """Engine names present in an export directory, in docs/architecture.md's order."""
    if not onnx_dir.is_dir():
        raise EngineError(f"{onnx_dir} does not exist: run `hallo2rt export` first")
    present = [n for n in KNOWN_ENGINES if (onnx_dir / n / MANIFEST).is_file()]
    if only:
        wanted = list(dict.fromkeys(only))
        missing = [n for n in wanted if n not in present]
        if missing:
            raise EngineError(
                f"{onnx_dir} has no export of {missing}; export them: hallo2rt export "
                f"--checkpoints DIR --out {onnx_dir} --only {','.join(missing)}"
            )
        return wanted
    if not present:
        raise EngineError(
            f"{onnx_dir} holds no exported engines (no <engine>/{MANIFEST}): run `hallo2rt export`"
        )
    return present


def _source(onnx_dir: Path, name: str) -> tuple[Path, Manifest]:
    """The export of ``name``: its ONNX path and manifest, the bytes checked against its hash."""
    export = read_manifest(onnx_dir / name)
    if export.backend:
        raise EngineError(f"{onnx_dir / name} is a built engine, not an ONNX export")
    path = onnx_dir / name / "model.onnx"
    if not path.is_file():
        raise EngineError(f"{path} is missing; re-export: hallo2rt export --only {name}")
    if onnx_sha256(path) != export.onnx_sha256:
        raise EngineError(
            f"{path} does not match the hash its export recorded (corrupt or edited after "
            f"export); re-export: hallo2rt export --only {name}"
        )
    return path, export


def check_engine(
    engine: Engine, onnx: Path, onnx_spec: EngineSpec, fp16: bool, seed: int = 0
) -> Parity:
    """Run ``engine`` and the ONNX reference on the same random feed at the opt sizes (and the
    min sizes when the spec is dynamic); parity numbers per size, ParityError beyond the gate."""
    parity = Parity(
        "the ONNX graph in onnxruntime CPUExecutionProvider, no graph optimisation",
        f"cosine >= {FP16_MIN_COSINE}" if fp16 else "max|diff| <= tol * max|ref|",
    )
    which = ("opt", "min") if engine.spec.profiles else ("opt",)
    for size in which:
        sizes = engine.spec.sizes(size)
        ref_feed = random_feed(onnx_spec, sizes, seed)
        feed = {
            t.name: ref_feed[t.name].to(engine.device, DTYPES[t.dtype]) for t in engine.spec.inputs
        }
        with torch.inference_mode():
            got = engine.infer(feed)
        got_list = [got[t.name] for t in engine.spec.outputs]
        from .ort_backend import check_on_cpu

        arrays = {k: v.numpy() for k, v in ref_feed.items()}
        outputs, attention = check_on_cpu(onnx, arrays, optimize=False)
        want = [torch.from_numpy(o) for o in outputs]
        what = f"{engine.backend} engine vs its ONNX (ORT CPU) at {size} sizes {sizes}"
        compare = compare_fp16 if fp16 else compare_fp32
        outs = compare(engine.spec, got_list, want, what)
        parity.runs[size] = ParityRun(sizes, attention, outs)
    return parity


def build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    config: BuildConfig,
    only: Iterable[str] | None = None,
    timing_cache: str | Path | None = None,
    checkpoints: str | Path | None = None,
    check: bool = True,
    progress: Callable[[str, str, Manifest | None], None] | None = None,
) -> dict[str, Manifest]:
    """Build every exported engine (or ``only`` those) of ``onnx_dir`` into ``out_dir``.

    timing_cache: TensorRT timing cache file (read if present, written after each build).
    checkpoints: the torch backend's weights (default: the tree the export recorded).
    check: run each built engine against its ONNX (skip only for huge engines on a small box).
    progress: called with ("start", name, None) and ("done", name, manifest).
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    names = exported_engines(onnx_dir, only)
    sources = {n: _source(onnx_dir, n) for n in names}  # every export checked before building
    backend = backend_module(config.backend)
    env = environment(config.device, config.backend)
    backend.check_available(config, env)
    if out_dir.resolve() == onnx_dir.resolve():
        raise OptionError(
            f"--out {out_dir} is the --onnx folder: the engines would replace the exports they "
            "are built from; build into another folder"
        )
    manifests = {}
    with output_folder(out_dir):
        for name in names:
            onnx, export = sources[name]
            rebuild = (
                f"hallo2rt build --onnx {shlex.quote(str(onnx_dir.resolve()))} --out "
                f"{shlex.quote(str(out_dir.resolve()))} {config.flags()} --only {name}"
            )
            if progress:
                progress("start", name, None)
            manifests[name] = _build_one(
                backend,
                onnx,
                export,
                out_dir,
                config,
                env,
                rebuild,
                timing_cache,
                checkpoints,
                check,
            )
            if progress:
                progress("done", name, manifests[name])
    return manifests


def _build_one(
    backend, onnx, export, out_dir, config, env, rebuild, timing_cache, checkpoints, check
) -> Manifest:
    name = export.engine
    tmp = out_dir / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        start = time.perf_counter()
        built = backend.build(onnx, export, tmp, config, env, timing_cache, checkpoints)
        spec: EngineSpec = built.pop("spec", export.spec)
        build = dataclasses.asdict(config)
        manifest = Manifest(
            engine=name,
            spec=spec,
            precision=built.pop("precision"),
            backend=config.backend,
            build=build,
            cache_key=cache_key(spec.digest(), export.onnx_sha256, build, env),
            onnx={
                "path": str(onnx.resolve()),
                "sha256": export.onnx_sha256,
                "precision": export.precision,
            },
            export_parity=export.parity,
            shapes=export.shapes,
            model_config=export.model_config,
            checkpoints=built.pop("checkpoints", export.checkpoints),
            sources=export.sources,
            source_sha256=export.source_sha256,
            environment=env,
            rebuild=rebuild,
            artifact=built.pop("artifact"),
            artifact_data=built.pop("artifact_data", []),
            extra=built,  # the backend's own facts
        )
        files = artifact_files(tmp, manifest)
        if files:
            manifest.artifact_bytes = sum(f.stat().st_size for f in files)
            manifest.artifact_sha256 = sha256_files(files)
        manifest.build_seconds = round(time.perf_counter() - start, 2)
        manifest.write(tmp)
        if check:
            with backend.ENGINE(tmp, manifest, torch.device(config.device)) as engine:
                fp16 = "fp16" in (manifest.precision, export.precision)
                manifest.parity = check_engine(engine, onnx, export.spec, fp16)
        else:
            manifest.parity = Parity("", "", skipped="built with --no-check: NOT verified")
        manifest.total_seconds = round(time.perf_counter() - start, 2)
        manifest.write(tmp)
        final = out_dir / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        record_verified(final, manifest)  # hashed above: the first open need not hash again
        log.info(
            "built %s (%s, %s) in %.1f s",
            name,
            config.backend,
            manifest.precision,
            manifest.total_seconds,
        )
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
