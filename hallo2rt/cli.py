"""The ``hallo2rt`` console script: a thin parser over library functions (docs/style.md §12).

Each subcommand imports only what it needs. Errors with a clear cause (bad input, a stale or
missing engine, a missing package) print one line and exit 1; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from hallo2rt.demo import DEMO_SIZE, cache_dir
from hallo2rt.engines.errors import Hallo2rtError, OptionError

SUBCOMMANDS = {
    "export": "export every engine's graph to ONNX from a checkpoint tree",
    "build": "build TensorRT / ONNX Runtime engines from exported ONNX",
    "generate": "animate a portrait from driving audio into an MP4 (PyTorch backend)",
    "upscale": "restore faces and upscale an existing video x2 / x4 (Hallo2's high resolution)",
    "bench": "measure frames per second and per-stage latency",
    "demo": "run the whole pipeline on tiny random weights and bundled media (no downloads)",
    "doctor": "report what this machine can run (GPU, CUDA, TensorRT, ONNX Runtime)",
    "proof": "run every GPU check and measurement of the project in one time budget",
}
ERROR_EXIT = 1

log = logging.getLogger("hallo2rt")


def _add_checkpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoints", required=True, type=Path, help="the official pretrained_models/ folder"
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=40, help="DDIM steps")
    p.add_argument("--cfg", type=float, default=3.5, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=42, help="same seed, same video")
    p.add_argument("--pose-weight", type=float, default=1.0, help="background/pose audio branch")
    p.add_argument("--face-weight", type=float, default=1.0, help="face audio branch")
    p.add_argument("--lip-weight", type=float, default=1.0, help="lip audio branch")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument(
        "--official-rng",
        action="store_true",
        help="draw the mask and noise exactly as the official code (parity checks)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cpu or cuda[:N] (auto: cpu for --checkpoints, the engines' device for --engines)",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "fp16"),
        default="fp32",
        help="precision of the image path (fp16 needs a GPU)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _add_engine_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoints",
        type=Path,
        help="the official pretrained_models/ folder: the weights (PyTorch path), and the "
        "face-analysis / vocal-separation models when those are needed",
    )
    p.add_argument(
        "--engines",
        type=Path,
        help="engines built by `hallo2rt build` (any backend): run on them instead of "
        "the PyTorch modules",
    )
    p.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="take engine NAME from another build directory (e.g. "
        "audio_encoder=ort-engines/ next to a TensorRT --engines); repeatable",
    )


def _add_sr_options(p: argparse.ArgumentParser, default_scale: int) -> None:
    p.add_argument(
        "--upscale",
        type=int,
        choices=(1, 2, 4),
        default=default_scale,
        help="output size factor through face restoration + RealESRGAN (4: 512 -> 2048, the "
        "official '4K')"
        + ("; 1: no super-resolution" if default_scale == 1 else "; 1: restore faces only"),
    )
    p.add_argument(
        "--fidelity",
        type=float,
        default=0.5,
        help="CodeFormer's w: 0 favours quality, 1 fidelity to the input face",
    )


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, type=Path, help="directory `hallo2rt export` wrote")
    p.add_argument("--out", required=True, type=Path, help="engine directory to write")
    p.add_argument(
        "--backend", required=True, choices=("tensorrt", "onnxruntime", "torch"), help="runtime"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (tensorrt: cuda)")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="fp16 engines (tensorrt: FP16 kernels, or strongly typed from an fp16 export; "
        "onnxruntime: requires an fp16 export; torch: half weights, GPU only)",
    )
    p.add_argument("--int8", action="store_true", help="tensorrt: allow int8 (Q/DQ graphs)")
    p.add_argument("--fp8", action="store_true", help="tensorrt: allow fp8 (cc >= 8.9, Q/DQ)")
    p.add_argument("--workspace", type=float, default=0.0, help="tensorrt workspace GiB (0: all)")
    p.add_argument("--timing-cache", type=Path, help="tensorrt timing cache file (development)")
    p.add_argument(
        "--cuda-graph", action="store_true", help="onnxruntime CUDA: replay as CUDA graphs"
    )
    p.add_argument("--compile", action="store_true", help="torch: torch.compile the wrappers")
    p.add_argument(
        "--checkpoints", type=Path, help="torch: the weights (default: the tree the export read)"
    )
    p.add_argument("--only", help="comma-separated engine names (default: all exported)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip running each engine against its ONNX (recorded as NOT verified)",
    )


def _add_bench_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engines", type=Path, help="engines built by `hallo2rt build`")
    src.add_argument("--checkpoints", type=Path, help="the official pretrained_models/ folder")
    src.add_argument(
        "--random",
        choices=("tiny", "full"),
        help="random weights (never zeros) in the official layout: tiny, or the released shapes "
        "(writes ~10 GB to a temporary folder)",
    )
    p.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "tensorrt"),
        default="torch",
        help="with --checkpoints/--random: run the PyTorch modules, or export and build "
        "engines of this backend first (into a temporary folder)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (not with --engines)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="not with --engines")
    p.add_argument("--steps", type=int, default=40, help="DDIM steps per clip")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (PyTorch paths)")
    p.add_argument("--size", type=int, default=512, help="image side (PyTorch paths)")
    p.add_argument("--clips", type=int, default=2, help="clips in the end-to-end runs")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per engine")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per engine first")
    p.add_argument(
        "--baseline",
        choices=("official",),
        help="also run the official-style eager loop on the same weights (PyTorch paths)",
    )
    p.add_argument("--no-cuda-graph", action="store_true", help="per-step launches")
    p.add_argument(
        "--upscale",
        type=int,
        choices=(1, 2, 4),
        default=1,
        help="also time the super-resolution stage at this factor (its four engines load too)",
    )
    p.add_argument(
        "--sr-only",
        action="store_true",
        help="with --upscale: time only super-resolution, of --size frames (no generation "
        "engines are loaded)",
    )
    p.add_argument("--json", type=Path, help="write every measurement as JSON lines")
    p.add_argument("--markdown", type=Path, help="write the report's tables")
    p.add_argument("--plot", type=Path, help="write the stage breakdown as a PNG")


def _add_proof_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=float, default=480, help="seconds for all sections")
    p.add_argument("--out", type=Path, default=Path("proof"), help="proof.jsonl, proof.md here")
    p.add_argument("--device", default="auto", help="cpu or cuda[:N] (auto: cuda if present)")
    p.add_argument(
        "--size",
        choices=("auto", "tiny", "full"),
        default="auto",
        help="model size (auto: the released shapes on a GPU, the tiny model on a CPU)",
    )
    p.add_argument("--steps", type=int, default=40, help="DDIM steps of every clip")
    p.add_argument("--clips", type=int, default=1, help="timed clips after one warm-up clip")
    p.add_argument("--only", help="comma-separated sections (default: all)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except the empty ones (None, False) whose help already says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="hallo2rt", formatter_class=fmt, description="Deploy Hallo2 portrait animation fast."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=fmt)
        if name == "generate":
            _add_engine_sources(p)
            p.add_argument(
                "--no-cuda-graph",
                action="store_true",
                help="launch each denoiser step separately instead of replaying the captured loop",
            )
            p.add_argument(
                "--keep-partial",
                action="store_true",
                help="on an error or Ctrl-C keep the clips finished so far as a playable MP4",
            )
            p.add_argument("--image", required=True, type=Path, help="portrait (JPEG/PNG/...)")
            p.add_argument("--audio", required=True, type=Path, help="driving audio (any format)")
            p.add_argument("--out", required=True, type=Path, help="output .mp4")
            p.add_argument(
                "--face-box",
                help="x0,y0,x1,y1 of the face in image pixels (default: detected with "
                "face_analysis/models/scrfd_10g_bnkps.onnx)",
            )
            p.add_argument(
                "--face-embedding",
                type=Path,
                help="raw 512-d ArcFace embedding saved with numpy.save (default: computed "
                "with face_analysis/models/glintr100.onnx)",
            )
            p.add_argument(
                "--lip-box",
                help="x0,y0,x1,y1 of the lips (default: from the detected mouth corners, or "
                "estimated from the face box)",
            )
            p.add_argument(
                "--face-expand-ratio",
                type=float,
                default=1.2,
                help="face rectangle expansion about its centre (official)",
            )
            p.add_argument(
                "--size",
                type=int,
                help="output side, multiple of 64 (default: 512, or the engines' size)",
            )
            p.add_argument(
                "--separate-vocals",
                action="store_true",
                help="isolate the voice with audio_separator/Kim_Vocal_2.onnx first",
            )
            _add_sr_options(p, default_scale=1)
            _add_run_options(p)
        elif name == "upscale":
            _add_engine_sources(p)
            p.add_argument("--in", dest="src", required=True, type=Path, help="input video")
            p.add_argument("--out", required=True, type=Path, help="output .mp4")
            _add_sr_options(p, default_scale=4)
            p.add_argument(
                "--device",
                default="auto",
                help="cpu or cuda[:N] (auto: cpu for --checkpoints, the engines' device)",
            )
            p.add_argument(
                "--dtype", choices=("fp32", "fp16"), default="fp32", help="with --checkpoints"
            )
            p.add_argument("--quiet", action="store_true", help="no progress line")
        elif name == "export":
            _add_checkpoints(p)
            p.add_argument("--out", required=True, type=Path, help="engine directory to write")
            p.add_argument(
                "--precision",
                choices=("fp32", "fp16"),
                default="fp32",
                help="graph precision; fp16 keeps norms and the AudioProj GEMM in fp32 and the "
                "audio encoder, face restorer and face detector entirely in fp32",
            )
            p.add_argument("--only", help="comma-separated engine names (default: all)")
            p.add_argument("--size", type=int, default=512, help="image side (multiple of 64)")
            p.add_argument("--frames", type=int, default=16, help="frames per clip")
            p.add_argument(
                "--sr-frames",
                type=int,
                default=16,
                help="largest temporal window of the face restorer",
            )
        elif name == "build":
            _add_build_options(p)
        elif name == "bench":
            _add_bench_options(p)
        elif name == "doctor":
            p.add_argument("--engines", type=Path, help="also report on this engine directory")
            p.add_argument(
                "--verify",
                action="store_true",
                help="hash every engine artifact against its manifest (slow for large engines)",
            )
        elif name == "proof":
            _add_proof_options(p)
        elif name == "demo":
            p.add_argument("--out", type=Path, default=Path("demo.mp4"), help="output .mp4")
            p.add_argument(
                "--cache",
                type=Path,
                default=cache_dir(),
                help="where the tiny random model is kept between runs",
            )
            _add_run_options(p)
    return parser


def _run_config(args: argparse.Namespace, **more):
    """The run options every generating subcommand shares, plus ``more`` of RunConfig's."""
    from hallo2rt.runtime.pipeline import RunConfig

    return RunConfig(
        **more,
        steps=args.steps,
        cfg_scale=args.cfg,
        seed=args.seed,
        pose_weight=args.pose_weight,
        face_weight=args.face_weight,
        lip_weight=args.lip_weight,
        frames=args.frames,
        official_rng=args.official_rng,
    )


def _progress_printer(quiet: bool):
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def show(p) -> None:
        eta = "?" if math.isnan(p.eta) else f"{p.eta:.0f}s"
        line = (
            f"clip {min(p.clip + 1, p.clips)}/{p.clips}  step {p.steps_done}/"
            f"{p.steps_total}  {p.fps:.2f} fps  ETA {eta}"
        )
        if tty:
            print(
                "\r" + line,
                end="" if p.steps_done < p.steps_total else "\n",
                file=sys.stderr,
                flush=True,
            )
        elif p.steps_done % max(p.steps_total // p.clips, 1) == 0:
            print(line, file=sys.stderr, flush=True)

    return show


def _vocal_separator(args: argparse.Namespace):
    if not args.separate_vocals:
        return None
    from hallo2rt.runtime.vocals import MODEL, MODEL_DATA, mdx_params, separate_vocals

    mdx_params(args.checkpoints / MODEL, args.checkpoints / MODEL_DATA)  # fail before loading
    return lambda wave: separate_vocals(wave, args.checkpoints)


def _session(args: argparse.Namespace, generation: bool = True, upscale: bool = False):
    """The engines of this run: built ones (--engines) or the PyTorch modules (--checkpoints);
    those of a generation and/or those of super-resolution."""
    from hallo2rt.assemble import open_session

    overrides = {}
    for item in args.engine:
        name, sep, directory = item.partition("=")
        if not sep:
            raise OptionError(f"--engine {item!r}: expected NAME=DIR")
        overrides[name.strip()] = Path(directory)
    return open_session(
        engines=args.engines,
        checkpoints=args.checkpoints,
        overrides=overrides,
        device=None if args.device == "auto" else args.device,
        dtype=args.dtype,
        size=getattr(args, "size", None),
        frames=getattr(args, "frames", 16),
        generation=generation,
        upscale=upscale,
    )


def _face_analysis_dir(args: argparse.Namespace) -> Path:
    if args.checkpoints is None:
        raise OptionError(
            "without --face-box and --face-embedding the face is found with the official "
            "face_analysis models: pass --checkpoints pretrained_models"
        )
    return args.checkpoints / "face_analysis" / "models"


def cmd_generate(args: argparse.Namespace) -> int:
    from hallo2rt.runtime.pipeline import generate_video
    from hallo2rt.runtime.portrait import load_embedding, parse_box

    if args.separate_vocals and args.checkpoints is None:
        raise OptionError("--separate-vocals reads audio_separator/ from --checkpoints")
    separate = _vocal_separator(args)
    face_box = parse_box(args.face_box) if args.face_box else None
    lip_box = parse_box(args.lip_box) if args.lip_box else None
    embedding = load_embedding(args.face_embedding) if args.face_embedding else None
    if face_box is None or embedding is None:  # before the big weights load: fail fast
        from hallo2rt.runtime.face_analysis import analyze_portrait
        from hallo2rt.runtime.portrait import load_image

        box, emb, lips = analyze_portrait(load_image(args.image), _face_analysis_dir(args))
        embedding = emb if embedding is None else embedding
        if face_box is None:
            face_box, lip_box = box, lip_box or lips
    session = _session(args, upscale=args.upscale != 1)
    if not args.quiet:  # say which step loop ran (CUDA graph or per-step launches) and why
        logging.getLogger("hallo2rt.runtime.pipeline").setLevel(logging.INFO)
    cfg = _run_config(
        args,
        size=args.size or session.size,
        face_expand_ratio=args.face_expand_ratio,
        cuda_graph=not args.no_cuda_graph,
        keep_partial=args.keep_partial,
        upscale=args.upscale,
        fidelity=args.fidelity,
    )
    with session:
        out = generate_video(
            session,
            args.image,
            args.audio,
            args.out,
            face_box,
            embedding,
            cfg,
            lip_box=lip_box,
            progress=_progress_printer(args.quiet),
            separate=separate,
        )
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from hallo2rt.runtime.sr import upscale_video
    from hallo2rt.runtime.video import VideoReader

    if args.engines is None:  # PyTorch modules: shapes from the video (engines fix their own)
        with VideoReader(args.src) as reader:
            args.size = -(-max(reader.height, reader.width) // 64) * 64
    session = _session(args, generation=False, upscale=True)
    tty = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        of = f"/{total}" if total else ""
        print(f"\rupscaled {done}{of} frames", end="", file=sys.stderr, flush=True)

    with session:
        out = upscale_video(
            session,
            args.src,
            args.out,
            args.upscale,
            args.fidelity,
            None if args.quiet or not tty else show,
        )
    print(("\n" if tty and not args.quiet else "") + f"wrote {out}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hallo2rt.demo import run_demo

    device = "cpu" if args.device == "auto" else args.device
    out = run_demo(
        args.out,
        args.cache,
        _run_config(args, size=DEMO_SIZE),
        device,
        args.dtype == "fp16",
        _progress_printer(args.quiet),
    )
    print(
        f"wrote {out}\nNOTE: the demo runs a tiny model with RANDOM weights, so the picture is "
        "noise: it shows the whole pipeline working, not Hallo2's quality. With the real "
        "checkpoints run:\n  hallo2rt generate --checkpoints pretrained_models --image "
        "face.jpg --audio speech.wav --face-box x0,y0,x1,y1 --face-embedding face.npy "
        "--out out.mp4 --device cuda --dtype fp16",
        file=sys.stderr,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hallo2rt.export.graphs import GraphShapes
    from hallo2rt.export.onnx import export_engines

    only = [n.strip() for n in args.only.split(",")] if args.only else None
    shapes = GraphShapes(size=args.size, frames=args.frames, sr_frames=args.sr_frames)
    manifests = export_engines(args.checkpoints, args.out, only, shapes, args.precision)
    for name, m in manifests.items():
        outs = m["parity"]["outputs"].values()
        if m["precision"] == "fp16":
            check = f"min cosine {min(v['cosine'] for v in outs):.6f}"
        else:
            check = f"max rel {max(v['rel'] for v in outs):.2e}"
        print(
            f"{name:15s} {m['precision']} {m['onnx_bytes'] / 1e6:9.1f} MB  "
            f"{m['export_seconds']:7.1f} s  parity {check}",
            file=sys.stderr,
        )
    print(f"wrote {len(manifests)} engine(s) to {args.out}", file=sys.stderr)
    return 0


def _build_progress(event: str, name: str, m: dict | None) -> None:
    if event == "start":
        print(f"building {name} ...", file=sys.stderr, flush=True)
        return
    parity = m["parity"]
    if "skipped" in parity:
        check = "NOT checked (--no-check)"
    else:
        numbers = [v for r in parity["results"].values() for v in r["outputs"].values()]
        check = (
            f"min cosine {min(v['cosine'] for v in numbers):.6f}"
            if "cosine" in numbers[0]
            else f"max rel {max(v['rel'] for v in numbers):.2e}"
        )
    print(
        f"  {name:15s} {m['backend']} {m['precision']} {m['total_seconds']:7.1f} s  "
        f"vs ONNX: {check}",
        file=sys.stderr,
    )


def cmd_build(args: argparse.Namespace) -> int:
    from hallo2rt.engines.build import BuildConfig, build_engines

    config = BuildConfig(
        backend=args.backend,
        device=args.device,
        fp16=args.fp16,
        int8=args.int8,
        fp8=args.fp8,
        workspace_gb=args.workspace,
        cuda_graph=args.cuda_graph,
        compile=args.compile,
    )
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    manifests = build_engines(
        args.onnx,
        args.out,
        config,
        only=only,
        timing_cache=args.timing_cache,
        checkpoints=args.checkpoints,
        check=not args.no_check,
        progress=_build_progress,
    )
    print(f"built {len(manifests)} engine(s) into {args.out}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import tempfile

    from hallo2rt.assemble import bench_session
    from hallo2rt.benchmarks.bench import (
        BenchConfig,
        markdown,
        plot,
        run_benchmark,
        write_json_lines,
    )

    cfg = BenchConfig(
        steps=args.steps,
        clips=args.clips,
        repeats=args.repeats,
        warmup=args.warmup,
        baseline=args.baseline == "official",
        cuda_graph=not args.no_cuda_graph,
        upscale=args.upscale,
        sr_only=args.sr_only,
        sr_size=args.size,
    )
    from hallo2rt.engines.spec import run_engines

    if args.sr_only and (args.upscale == 1 or cfg.baseline or args.plot):
        raise OptionError("--sr-only needs --upscale 2 or 4, and takes no --baseline or --plot")
    names = run_engines(not args.sr_only, args.upscale > 1)
    if args.engines is not None and cfg.baseline:
        raise OptionError(
            "--baseline official runs the PyTorch modules: use --checkpoints or --random"
        )
    with tempfile.TemporaryDirectory() as tmp:
        session, modules = bench_session(
            Path(tmp),
            names,
            engines=args.engines,
            checkpoints=args.checkpoints,
            random=args.random,
            backend=args.backend,
            device=args.device,
            dtype=args.dtype,
            size=args.size,
            frames=args.frames,
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
        records = run_benchmark(
            session, cfg, modules, log=lambda s: print(s, file=sys.stderr, flush=True)
        )
    report = markdown(records)
    print(report)
    if args.json:
        write_json_lines(records, args.json)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    if args.plot:
        plot(records, args.plot)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from hallo2rt.engines.doctor import doctor

    report = doctor(args.engines, args.verify)
    print(report.text())
    return 0 if report.engines_ok else ERROR_EXIT


def cmd_proof(args: argparse.Namespace) -> int:
    from hallo2rt.benchmarks.proof import ProofConfig, failed, markdown, run_proof

    cfg = ProofConfig(
        budget_s=args.budget,
        device=args.device,
        size=args.size,
        steps=args.steps,
        clips=args.clips,
        only=tuple(n.strip() for n in args.only.split(",")) if args.only else (),
    )
    records = run_proof(cfg, args.out, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(markdown(records))
    problems = failed(records)
    for line in problems:
        print(f"hallo2rt proof: FAILED {line}", file=sys.stderr)
    print(f"wrote {args.out / 'proof.jsonl'} and {args.out / 'proof.md'}", file=sys.stderr)
    return ERROR_EXIT if problems else 0


COMMANDS = {
    "generate": cmd_generate,
    "upscale": cmd_upscale,
    "demo": cmd_demo,
    "export": cmd_export,
    "build": cmd_build,
    "doctor": cmd_doctor,
    "bench": cmd_bench,
    "proof": cmd_proof,
}


def main(argv: list[str] | None = None) -> int:
    """Parse, run one subcommand; hallo2rt's own errors print one line and exit 1, anything else
    is a bug and keeps its traceback; Ctrl-C exits 130."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except Hallo2rtError as exc:  # a cause the user can fix: one line (-v: the traceback too)
        if args.verbose:
            raise
        print(f"hallo2rt {args.command}: error: {exc}", file=sys.stderr)
        return ERROR_EXIT
    except KeyboardInterrupt:
        kept = getattr(args, "keep_partial", False) and Path(args.out).is_file()
        what = f"the finished clips are in {args.out}" if kept else "no output was written"
        print(f"hallo2rt {args.command}: interrupted; {what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
