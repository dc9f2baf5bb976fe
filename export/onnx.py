"""Export engines to ONNX, prove each against its PyTorch wrapper in ONNX Runtime, write manifests.

``export_engines(checkpoints, out, ...)`` loads what the requested engines need (every missing
file reported before anything is written), then per engine: export with the spec's names and
symbolic dims, check the graph's I/O against the spec, run it in ONNX Runtime (CPU) on random
inputs at the spec shapes, compare with the wrapper (docs/architecture.md thresholds; beyond them
the export fails and names the output) and write ``model.onnx`` (+ external data when large) with
``manifest.json``. Each engine directory appears only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..engines.errors import OptionError, SetupError
from ..engines.manifest import (
    EngineError,
    Manifest,
    Parity,
    ParityRun,
    onnx_sha256,
    read_manifest,
    sha256_files,
)
from ..engines.ort_backend import check_on_cpu
from ..engines.parity import (  # noqa: F401  (ParityError: part of this module's API)
    FP16_MIN_COSINE,
    FP32_REL_TOL,
    ParityError,
    compare_fp16,
    compare_fp32,
)
from ..engines.paths import output_folder
from ..engines.spec import DTYPES, ENGINE_NAMES, FP32_ONLY, KNOWN_ENGINES, EngineSpec
from .checkpoints import load_pretrained
from .graphs import ENGINE_COMPONENTS, Graph, GraphShapes, build_graph, fit_shapes

log = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin
OPSET = 17


def _export_fp16(
    module: torch.nn.Module, spec: EngineSpec, args: tuple[torch.Tensor, ...], path: Path
) -> None:
    """fp16 graph through the dynamo exporter (the TorchScript one would trace with a real CPU
    fp16 forward, ~1000x slower). Norm statistics and the AudioProj GEMM stay fp32 (modules)."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as exc:
        raise SetupError("fp16 export needs onnxscript: pip install onnxscript") from exc
    dims = {k: torch.export.Dim(k, min=lo, max=hi) for k, (lo, _, hi) in spec.profiles.items()}
    dynamic = tuple(
        {i: dims[d] for i, d in enumerate(t.dims) if isinstance(d, str)} or None
        for t in spec.inputs
    )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=True,
            opset_version=18,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_shapes=dynamic if dims else None,
            external_data=False,
            verbose=False,
        )


@contextlib.contextmanager
def _half_weights(module: torch.nn.Module):
    """``module`` with fp16 parameters and buffers while the block runs, its fp32 tensors put
    back after: what ``module.half()`` does, without the full fp32 copy a ``deepcopy`` would
    hold at the same time (the full-size denoiser: 5.1 GB). Shared weights (other engines'
    modules) see the swap only for the duration."""
    saved = []
    with torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point():
                saved.append((t, t.data))
                t.data = t.data.half()
    try:
        yield module
    finally:
        for t, data in saved:
            t.data = data


def _export(graph: Graph, args: tuple[torch.Tensor, ...], path: Path) -> None:
    spec = graph.spec
    dynamic = {}
    for t in spec.inputs + spec.outputs:
        axes = {i: d for i, d in enumerate(t.dims) if isinstance(d, str)}
        if axes:
            dynamic[t.name] = axes
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
        torch.onnx.export(
            graph.module.eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=dynamic or None,
            do_constant_folding=True,
        )


def _declare_outputs(model, spec: EngineSpec) -> None:
    """Write the spec's output shapes into the graph: the TorchScript exporter names dynamic
    output dims itself (sometimes on the wrong axis); the spec is the contract, and parity
    checks the real shapes."""
    for out, t in zip(model.graph.output, spec.outputs, strict=True):
        shape = out.type.tensor_type.shape
        del shape.dim[:]
        for d in t.dims:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def _consolidate(path: Path, spec: EngineSpec) -> int:
    """Declare output shapes and re-save: one external data file when the weights pass ~2 GB
    (a protobuf cannot be serialised beyond that), shape inference on the saved file."""
    import onnx

    model = onnx.load(str(path))  # pulls in any per-tensor files the exporter wrote
    _declare_outputs(model, spec)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    for leftover in path.parent.iterdir():
        if leftover != path:
            leftover.unlink()
    large = size > EXTERNAL_DATA_BYTES
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location="model.onnx.data" if large else None,
    )
    onnx.shape_inference.infer_shapes_path(str(path))
    return size


# spec dtype -> ONNX TensorProto elem_type (FLOAT, FLOAT16, INT64)
ONNX_ELEM_TYPES = {"float32": 1, "float16": 10, "int64": 7}


def io_problems(spec: EngineSpec, graph) -> list[str]:
    """How an ONNX graph's inputs/outputs differ from the spec: names and order, element types
    (a plan or session allocates buffers from the spec: a wrong dtype would write 4-byte values
    into 2-byte buffers), ranks, static dims, and a dynamic axis where the spec has a symbol."""
    problems = []
    for kind, want, got in (
        ("input", spec.inputs, graph.input),
        ("output", spec.outputs, graph.output),
    ):
        if [t.name for t in want] != [v.name for v in got]:
            problems.append(f"{kind} names {[v.name for v in got]} != spec")
            continue
        for t, v in zip(want, got, strict=True):
            elem = v.type.tensor_type.elem_type
            if elem != ONNX_ELEM_TYPES[t.dtype]:
                problems.append(f"{kind} {t.name}: ONNX elem_type {elem}, spec {t.dtype}")
            dims = [
                d.dim_value if d.HasField("dim_value") else d.dim_param
                for d in v.type.tensor_type.shape.dim
            ]
            same = len(dims) == len(t.dims) and all(
                g == w if isinstance(w, int) else not isinstance(g, int) or g == 0
                for g, w in zip(dims, t.dims, strict=True)
            )
            if not same:
                problems.append(f"{kind} {t.name}: dims {dims} != spec {list(t.dims)}")
    return problems


def check_io(spec: EngineSpec, path: Path) -> None:
    """The ONNX graph's inputs/outputs match the spec (``io_problems``); RuntimeError if not."""
    import onnx

    problems = io_problems(spec, onnx.load(str(path), load_external_data=False).graph)
    if problems:
        raise RuntimeError(
            f"{path}: graph I/O does not match the {spec.name} spec: " + "; ".join(problems)
        )


def parity(
    graph: Graph, path: Path, args: tuple[torch.Tensor, ...], rel_tol: float = FP32_REL_TOL
) -> tuple[dict[str, dict[str, float]], str]:
    """Run the ONNX graph in ORT (CPU) and the wrapper on ``args``: per-output error numbers,
    and how ORT ran the graph's attention (``check_on_cpu``)."""
    feed = {t.name: a.numpy() for t, a in zip(graph.spec.inputs, args, strict=True)}
    got, attention = check_on_cpu(path, feed)  # outputs in graph order = spec order (check_io)
    with torch.no_grad():
        want = graph.module(*args)
    what = "ONNX Runtime disagrees with PyTorch"
    outputs = compare_fp32(graph.spec, [torch.from_numpy(g) for g in got], want, what, rel_tol)
    return outputs, attention


def parity_fp16(
    graph: Graph,
    spec16: EngineSpec,
    path: Path,
    args: tuple[torch.Tensor, ...],
    min_cosine: float = FP16_MIN_COSINE,
) -> tuple[dict[str, dict[str, float]], str]:
    """fp16 graph in ORT (CPU) vs the fp32 wrapper on the same input values: cosine per output,
    and how ORT ran the graph's attention."""
    feed = {
        t.name: (a.half() if t.dtype == "float16" else a).numpy()
        for t, a in zip(spec16.inputs, args, strict=True)
    }
    got, attention = check_on_cpu(path, feed)
    with torch.no_grad():  # the same values the fp16 graph saw
        want = graph.module(
            *[
                a.to(DTYPES[t.dtype]).float() if a.is_floating_point() else a
                for t, a in zip(spec16.inputs, args, strict=True)
            ]
        )
    what = "fp16 ONNX vs fp32 PyTorch"
    outputs = compare_fp16(spec16, [torch.from_numpy(g) for g in got], want, what, min_cosine)
    return outputs, attention


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(OPSET),
    }


def export_engine(
    graph: Graph, out_dir: Path, manifest_extra: dict, seed: int = 0, precision: str = "fp32"
) -> Manifest:
    """Export one graph into ``out_dir/<name>/`` (written under a temporary name first)."""
    name = graph.spec.name
    precision = "fp32" if name in FP32_ONLY else precision
    tmp = out_dir / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        start = time.perf_counter()
        args = graph.make_inputs(graph.spec.sizes("opt"), torch.Generator().manual_seed(seed))
        path = tmp / "model.onnx"
        spec = graph.spec.with_precision(precision)
        if precision == "fp16":
            half = tuple(a.to(DTYPES[t.dtype]) for t, a in zip(spec.inputs, args, strict=True))
            with _half_weights(graph.module) as module16:
                _export_fp16(module16, spec, half, path)
            gc.collect()  # the exporter's reference cycles hold the half weights
        else:
            _export(graph, args, path)
        size = _consolidate(path, spec)
        check_io(spec, path)
        if precision == "fp16":
            (numbers, attention), gate = (
                parity_fp16(graph, spec, path, args),
                f"cosine >= {FP16_MIN_COSINE}",
            )
        else:
            (numbers, attention), gate = (
                parity(graph, path, args),
                f"max|diff| <= {FP32_REL_TOL} * max|ref|",
            )
        run = ParityRun(spec.sizes("opt"), attention, numbers)
        manifest = Manifest(
            engine=name,
            spec=spec,
            precision=precision,
            parity=Parity(
                "the PyTorch wrapper in fp32 on the CPU; the ONNX in onnxruntime "
                "CPUExecutionProvider",
                gate,
                {"opt": run},
            ),
            onnx_sha256=onnx_sha256(path),
            onnx_bytes=size,
            export_seconds=round(time.perf_counter() - start, 2),
            versions=_versions(),
            **manifest_extra,
        )
        manifest.write(tmp)
        final = out_dir / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        log.info("exported %s (%s) in %.1f s", name, precision, manifest.export_seconds)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_engines(
    checkpoints: str | Path,
    out: str | Path,
    only: Iterable[str] | None = None,
    shapes: GraphShapes | None = None,
    precision: str = "fp32",
    progress: Callable[[str, str, Manifest | None], None] | None = None,
) -> dict[str, Manifest]:
    """Export the requested engines (default: all but the speed presets' step engines, which
    are exported when named) of the tree at ``checkpoints`` into ``out``.

    Checkpoints are loaded, and every missing file reported, before any engine is written; a
    failure leaves no folder that was not there. progress: called with ("start", name, None)
    and ("done", name, manifest).
    """
    shapes = shapes or GraphShapes()
    names = list(dict.fromkeys(only or ENGINE_NAMES))
    if precision not in ("fp32", "fp16"):
        raise OptionError(f"precision {precision!r}: expected fp32 or fp16")
    unknown = [n for n in names if n not in KNOWN_ENGINES]
    if unknown:
        raise OptionError(f"unknown engines {unknown}; known: {', '.join(KNOWN_ENGINES)}")
    out = Path(out)
    built = [n for n in names if _is_built_engine(out / n)]
    if built:
        raise OptionError(
            f"--out {out} holds built engines ({', '.join(built)}): an export would replace "
            "them; export into another folder (hallo2rt build reads it with --onnx)"
        )
    with output_folder(out):  # checked before the weights load; removed again if left empty
        components = dict.fromkeys(c for n in names for c in ENGINE_COMPONENTS[n])
        pre = load_pretrained(checkpoints, components)
        shapes = fit_shapes(shapes, pre)  # the face crop side is the restorer's
        shared = {
            "shapes": dataclasses.asdict(shapes),
            "model_config": json.loads(json.dumps(dataclasses.asdict(pre.config), default=str)),
            "checkpoints": str(Path(checkpoints).resolve()),
        }
        digests = {f: sha256_files([f]) for f in dict.fromkeys(pre.files.values())}

        def extra(name: str) -> dict:
            files = {c: pre.files[c] for c in ENGINE_COMPONENTS[name]}
            return {
                **shared,
                "sources": files,
                # the weights this graph came from (the torch backend checks them before use)
                "source_sha256": {
                    os.path.relpath(f, checkpoints): digests[f] for f in files.values()
                },
            }

        manifests = {}
        for n in names:
            if progress:
                progress("start", n, None)
            graph = build_graph(n, pre, shapes)
            manifests[n] = export_engine(graph, out, extra(n), precision=precision)
            if progress:
                progress("done", n, manifests[n])
        return manifests


def _is_built_engine(directory: Path) -> bool:
    """Whether ``directory`` holds an engine built by ``hallo2rt build`` (not an export)."""
    try:
        return read_manifest(directory).backend is not None
    except EngineError:
        return False
