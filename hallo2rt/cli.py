"""The ``hallo2rt`` console script: one small function per subcommand that reads the parsed
options (``options.py``), builds the configs and calls one library function (docs/style.md §12).

Each subcommand imports only what it needs. hallo2rt's own errors (``engines.errors``: bad
input, a stale or missing engine, a missing package) print one line and exit 1 (``-v``: with the
traceback); anything else is reported as a likely bug (``-v``: its traceback); Ctrl-C exits
130 and SIGTERM 143, both after the same clean-up (no partial file is left).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from hallo2rt.console import build_progress, export_progress, frame_counter, progress_printer
from hallo2rt.demo import DEMO_SIZE
from hallo2rt.engines.errors import Hallo2rtError, OptionError
from hallo2rt.options import build_parser

ERROR_EXIT = 1  # a problem the message explains
INTERNAL_EXIT = 2  # an unexpected error (a bug)


def _run_config(args: argparse.Namespace, **more):
    """The run options every generating subcommand shares, plus ``more`` of RunConfig's."""
    from hallo2rt.runtime.pipeline import RunConfig

    sampling = _sampling(args)
    return RunConfig(
        **more,
        **sampling.fields(),
        cfg_scale=args.cfg,
        seed=args.seed,
        pose_weight=args.pose_weight,
        face_weight=args.face_weight,
        lip_weight=args.lip_weight,
        frames=16 if args.frames is None else args.frames,  # generate: then the engines' own
        official_rng=args.official_rng,
    )


def _sampling(args: argparse.Namespace):
    """``runtime.sampler.Sampling``: --preset's, each part overridden by --sampler, --steps,
    --guidance-steps and --cache-interval when given. A guidance count beyond fewer --steps is
    cut to them (the preset's meaning: guidance on every step it has)."""
    from hallo2rt.runtime.sampler import PRESETS, Sampling

    preset = PRESETS[args.preset]
    steps = preset.steps if args.steps is None else args.steps
    guidance = preset.guidance_steps if args.guidance_steps is None else args.guidance_steps
    if args.guidance_steps is None and guidance is not None:
        guidance = min(guidance, steps)
    interval = preset.cache_interval if args.cache_interval is None else args.cache_interval
    if args.cache_interval is None:
        interval = min(interval, steps)
    return Sampling(args.sampler or preset.sampler, steps, guidance, interval)


def _vocal_separator(args: argparse.Namespace):
    if not args.separate_vocals:
        return None
    from hallo2rt.runtime.vocals import MODEL, MODEL_DATA, mdx_params, separate_vocals

    mdx_params(args.checkpoints / MODEL, args.checkpoints / MODEL_DATA)  # fail before loading
    return lambda wave: separate_vocals(wave, args.checkpoints)


def _session(
    args: argparse.Namespace,
    generation: bool = True,
    upscale: bool = False,
    steps: tuple[str, ...] = (),
):
    """The engines of this run: built ones (--engines) or the PyTorch modules (--checkpoints);
    those of a generation (with the step engines ``steps`` its plan calls) and/or those of
    super-resolution."""
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
        frames=16 if getattr(args, "frames", None) is None else args.frames,
        generation=generation,
        upscale=upscale,
        steps=steps,
    )


def _face_analysis_dir(args: argparse.Namespace) -> Path:
    if args.checkpoints is None:
        raise OptionError(
            "without --face-box and --face-embedding the face is found with the official "
            "face_analysis models: pass --checkpoints pretrained_models"
        )
    return args.checkpoints / "face_analysis" / "models"


@dataclasses.dataclass(frozen=True)
class GenerateInputs:
    """What a ``generate`` run needs besides its session, checked (``prepare_generate``)."""

    cfg: Any  # runtime.pipeline.RunConfig (size and frames: the engines' once they open)
    face_box: tuple
    lip_box: tuple | None
    embedding: Any  # (512,) numpy array
    separate: Any = None  # the vocal separator, or None


def prepare_generate(args: argparse.Namespace) -> GenerateInputs:
    """Every check of ``generate`` that needs no weights: the output path, the options, the
    boxes and embedding; without a face box or embedding the portrait's face is found now (the
    face-analysis models only). Shared by ``hallo2rt generate`` and the server's job intake, so
    both give the same messages."""
    from hallo2rt.runtime.media import check_output
    from hallo2rt.runtime.portrait import load_embedding, parse_box

    check_output(args.out, image=args.image, audio=args.audio)  # before any weight loads
    cfg = _run_config(  # checked now; the size of built engines is filled in once they open
        args,
        size=512 if args.size is None else args.size,
        face_expand_ratio=args.face_expand_ratio,
        cuda_graph=not args.no_cuda_graph,
        keep_partial=args.keep_partial,
        upscale=args.upscale,
        fidelity=args.fidelity,
    )
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
    return GenerateInputs(cfg, face_box, lip_box, embedding, separate)


def cmd_generate(args: argparse.Namespace) -> int:
    from hallo2rt.runtime.pipeline import generate_video

    job = prepare_generate(args)
    cfg = job.cfg
    session = _session(args, upscale=args.upscale != 1, steps=cfg.sampling.plan())
    if not args.quiet:  # say which step loop ran (CUDA graph or per-step launches) and why
        logging.getLogger("hallo2rt.runtime.pipeline").setLevel(logging.INFO)
    if args.size is None:
        cfg = dataclasses.replace(cfg, size=session.size)
    if args.frames is None:
        cfg = dataclasses.replace(cfg, frames=session.frames)
    with session:
        out = generate_video(
            session,
            args.image,
            args.audio,
            args.out,
            job.face_box,
            job.embedding,
            cfg,
            lip_box=job.lip_box,
            progress=progress_printer(args.quiet),
            separate=job.separate,
        )
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from hallo2rt.runtime.media import check_output
    from hallo2rt.runtime.sr import upscale_video
    from hallo2rt.runtime.video import VideoReader

    check_output(args.out, input=args.src)  # before any weight loads
    if args.engines is None:  # PyTorch modules: shapes from the video (engines fix their own)
        with VideoReader(args.src) as reader:
            args.size = -(-max(reader.height, reader.width) // 64) * 64
    session = _session(args, generation=False, upscale=True)
    with session:
        out = upscale_video(
            session, args.src, args.out, args.upscale, args.fidelity, frame_counter(args.quiet)
        )
    tty = sys.stderr.isatty()
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
        progress_printer(args.quiet),
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
    manifests = export_engines(
        args.checkpoints, args.out, only, shapes, args.precision, progress=export_progress
    )
    print(f"wrote {len(manifests)} engine(s) to {args.out}", file=sys.stderr)
    return 0


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
        progress=build_progress,
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

    sampling = _sampling(args)
    cfg = BenchConfig(
        **sampling.fields(),
        against=args.against,
        clips=args.clips,
        repeats=args.repeats,
        warmup=args.warmup,
        baseline=args.baseline == "official",
        cuda_graph=not args.no_cuda_graph,
        upscale=args.upscale,
        sr_only=args.sr_only,
        sr_size=args.size,
    )
    from hallo2rt.engines.paths import check_file_target
    from hallo2rt.engines.spec import run_engines

    for option in ("json", "markdown", "plot"):  # before the benchmark, not after it
        if getattr(args, option):
            check_file_target(getattr(args, option), f"--{option}")
    if args.sr_only and (args.upscale == 1 or cfg.baseline or args.plot):
        raise OptionError("--sr-only needs --upscale 2 or 4, and takes no --baseline or --plot")
    if args.sr_only and cfg.against:
        raise OptionError("--sr-only times super-resolution alone: it takes no --against")
    names = run_engines(not args.sr_only, args.upscale > 1, cfg.engines())
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


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from hallo2rt.benchmarks.compare import compare_videos
    from hallo2rt.engines.paths import check_file_target
    from hallo2rt.runtime.portrait import parse_box

    if args.json:
        check_file_target(args.json, "--json")
    mouth = parse_box(args.mouth) if args.mouth else None
    result = compare_videos(args.reference, args.output, mouth)
    print(result.text())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    failed = []
    if args.min_psnr is not None and not result.psnr.mean >= args.min_psnr:
        failed.append(f"mean PSNR {result.psnr.mean:.2f} dB < --min-psnr {args.min_psnr:g}")
    if args.min_ssim is not None and not result.ssim.mean >= args.min_ssim:
        failed.append(f"mean SSIM {result.ssim.mean:.4f} < --min-ssim {args.min_ssim:g}")
    if result.problems and (args.min_psnr is not None or args.min_ssim is not None):
        failed += result.problems  # a gate also needs the same frames and audio
    for line in failed:
        print(f"hallo2rt compare: FAILED {line}", file=sys.stderr)
    return ERROR_EXIT if failed else 0


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise OptionError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    if not token:
        raise OptionError(f"--token-file {path} is empty: put the token in it")
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    from hallo2rt.serve.jobs import ServeConfig

    try:
        from hallo2rt.serve.app import run_server
    except ImportError as exc:
        raise OptionError(
            f"hallo2rt serve needs Ray Serve and FastAPI ({exc.name} is missing): "
            'pip install "hallo2rt[serve]"'
        ) from None
    config = ServeConfig(
        engines=args.engines,
        checkpoints=args.checkpoints,
        results=args.results.resolve(),
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        device=None if args.device == "auto" else args.device,
        dtype=args.dtype,
        size=args.size,
        keep_seconds=args.keep_hours * 3600,
        max_queue=args.max_queue,
        max_upload_mb=args.max_upload_mb,
        max_audio_seconds=args.max_audio_seconds,
        token=_token(args.token_file),
        threads=args.threads,
        upscale=args.upscale,
        sr_replicas=args.sr_replicas,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and config.token is None:
        print(
            f"warning: serving on {args.host} without --token-file: anyone who reaches this "
            "port can use the GPUs",
            file=sys.stderr,
        )
    run_server(
        config,
        args.host,
        args.port,
        args.address,
        page=not args.no_page,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from hallo2rt.runtime.media import check_output
    from hallo2rt.serve.client import Client
    from hallo2rt.serve.jobs import FIELDS

    check_output(args.out, image=args.image, audio=args.audio)
    client = Client(args.url, _token(args.token_file))
    options = {n: getattr(args, n) for n in FIELDS}
    job = client.submit(args.image, args.audio, args.face_embedding, **options)
    print(f"job {job} queued at {args.url}", file=sys.stderr)

    def show(state: dict) -> None:
        if not args.quiet and state["state"] == "running":
            print(
                f"\rclip {state['clip']}/{state['clips']}  step {state['step']}/{state['steps']}"
                f"  {state['fps']:.2f} frames/s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    client.wait(job, show)
    client.download(job, args.out)
    print(("" if args.quiet else "\n") + f"wrote {args.out}", file=sys.stderr)
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "upscale": cmd_upscale,
    "demo": cmd_demo,
    "export": cmd_export,
    "build": cmd_build,
    "doctor": cmd_doctor,
    "bench": cmd_bench,
    "proof": cmd_proof,
    "compare": cmd_compare,
    "serve": cmd_serve,
    "submit": cmd_submit,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: every ``finally``
    and ``with`` runs and removes its temporary files (the default SIGTERM action would kill
    the process and leave them)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Parse, run one subcommand. hallo2rt's own errors print one line and exit 1; anything else
    is a bug: one line saying so and exit 2 (``-v``: the traceback of either); Ctrl-C exits
    130, SIGTERM 143."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    threads = torch_threads()
    try:
        return _run(args)
    finally:
        torch_threads(threads)  # the caller's setting back (main() is also called in-process)
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def torch_threads(n: int | None = None) -> int:
    """torch's CPU thread count (set it when ``n``); imports torch only when it is loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _use_threads(args: argparse.Namespace) -> None:
    """Apply --threads (or the default: the cores not busy now) to torch and, through it, to
    ONNX Runtime; say so when other processes made it fewer than the cores."""
    import torch

    from hallo2rt.threads import choose_threads, usable_cores

    n, why = choose_threads(args.threads)
    torch.set_num_threads(n)
    quiet = getattr(args, "quiet", False) or args.command in ("doctor", "compare")  # short
    if args.threads is None and n < usable_cores() and not quiet:
        print(f"using {n} CPU thread(s): {why} (--threads N to choose)", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        _use_threads(args)
        return COMMANDS[args.command](args)
    except Hallo2rtError as exc:  # a cause the user can fix: one line (-v: the traceback too)
        if args.verbose:
            raise
        print(f"hallo2rt {args.command}: error: {exc}", file=sys.stderr)
        return ERROR_EXIT
    except Exception as exc:  # not one of ours: a bug; -v shows where
        if args.verbose:
            raise
        print(
            f"hallo2rt {args.command}: unexpected error {type(exc).__name__}: {exc} (this is "
            "likely a bug in hallo2rt: run again with -v for the traceback and report it)",
            file=sys.stderr,
        )
        return INTERNAL_EXIT
    except KeyboardInterrupt as exc:
        kept = getattr(args, "keep_partial", False) and Path(args.out).is_file()
        what = f"the finished clips are in {args.out}" if kept else "no output was written"
        if args.command in ("export", "build"):
            what = "the engines finished before it are whole; the one in progress was removed"
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"hallo2rt {args.command}: {how}; {what}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
