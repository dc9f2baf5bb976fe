"""The ``hallo2rt`` command line's options: the parser of every subcommand, with the option
groups that several subcommands share defined once. Help shows every default."""

from __future__ import annotations

import argparse
from pathlib import Path

from hallo2rt.demo import cache_dir
from hallo2rt.engines.spec import SPEED_ENGINES
from hallo2rt.runtime.sampler import PRESETS, SAMPLERS

SUBCOMMANDS = {
    "export": "export every engine's graph to ONNX from a checkpoint tree",
    "build": "build TensorRT / ONNX Runtime engines from exported ONNX",
    "generate": "animate a portrait from driving audio into an MP4 (PyTorch backend)",
    "upscale": "restore faces and upscale an existing video x2 / x4 (Hallo2's high resolution)",
    "bench": "measure frames per second and per-stage latency",
    "demo": "run the whole pipeline on tiny random weights and bundled media (no downloads)",
    "doctor": "report what this machine can run (GPU, CUDA, TensorRT, ONNX Runtime)",
    "proof": "run every GPU check and measurement of the project in one time budget",
    "compare": "how far one video is from another: per-frame PSNR and SSIM, mouth, audio",
    "serve": "serve generation over HTTP (an API and a web page) on Ray Serve",
    "submit": "send a job to a hallo2rt server, follow it and download the video",
}


def _add_checkpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoints", required=True, type=Path, help="the official pretrained_models/ folder"
    )


def _add_preset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="faithful",
        help="speed preset: "
        + "; ".join(f"{k} = {v.describe()}" for k, v in PRESETS.items())
        + " (the options below override its parts)",
    )
    p.add_argument("--sampler", choices=SAMPLERS, help="the preset's sampler unless given")
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    p.add_argument(
        "--guidance-steps",
        type=int,
        metavar="K",
        help="both guidance halves on the first K steps only, then the conditional half alone "
        "(needs the denoiser_cond engines; default: the preset's)",
    )
    p.add_argument(
        "--cache-interval",
        type=int,
        metavar="N",
        help="a full denoiser step every N steps, cheap steps reusing its deep features between "
        "(needs the *_deep and *_shallow engines; 1: no cache; default: the preset's)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_preset_options(p)
    p.add_argument("--cfg", type=float, default=3.5, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=42, help="same seed, same video")
    p.add_argument("--pose-weight", type=float, default=1.0, help="background/pose audio branch")
    p.add_argument("--face-weight", type=float, default=1.0, help="face audio branch")
    p.add_argument("--lip-weight", type=float, default=1.0, help="lip audio branch")
    p.add_argument(
        "--frames", type=int, help="frames per clip (default: 16, or the engines' frames)"
    )
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
        help="fp16 engines (tensorrt: an fp16 export builds strongly typed without this flag; "
        "on an fp32 export it lets TensorRT 10 pick fp16 kernels, TensorRT 11 refuses it; "
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
    _add_preset_options(p)
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
    p.add_argument(
        "--against",
        choices=tuple(PRESETS),
        help="also render the same video with this preset (e.g. faithful) on the same session "
        "and report the speed-up beside the deviation (PSNR, SSIM, mouth region)",
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


def build_parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """The command line's parser; ``parser_class`` (the subcommands' too): one whose ``error``
    raises instead of exiting lets a server parse a request's options."""
    fmt = _HelpFormatter
    parser = parser_class(
        prog="hallo2rt", formatter_class=fmt, description="Deploy Hallo2 portrait animation fast."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=fmt)
        p.add_argument(  # also after the subcommand, where users type it
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )
        p.add_argument(
            "--threads",
            type=int,
            help="CPU threads for torch and ONNX Runtime (default: the cores not busy with other "
            "processes when the command starts; on a loaded machine fewer threads are faster, as "
            "idle threads spin waiting for cores others hold)",
        )
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
                help="raw ArcFace embedding saved with numpy.save (512 values for the released "
                "model, 64 for the demo's tiny one; default: computed with "
                "face_analysis/models/glintr100.onnx)",
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
            p.add_argument(
                "--only",
                help="comma-separated engine names (default: all but the speed presets' step "
                "engines, which are exported when named: " + ", ".join(SPEED_ENGINES) + ")",
            )
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
        elif name == "compare":
            p.add_argument("reference", type=Path, help="the reference video (e.g. faithful)")
            p.add_argument("output", type=Path, help="the video to measure against it")
            p.add_argument(
                "--mouth",
                help="x0,y0,x1,y1 of the mouth in video pixels: PSNR and SSIM there too",
            )
            p.add_argument("--json", type=Path, help="write the result and per-frame values")
            p.add_argument(
                "--min-psnr", type=float, help="exit 1 when the mean PSNR (dB) is below this"
            )
            p.add_argument("--min-ssim", type=float, help="exit 1 when the mean SSIM is below")
        elif name == "demo":
            p.add_argument("--out", type=Path, default=Path("demo.mp4"), help="output .mp4")
            p.add_argument(
                "--cache",
                type=Path,
                default=cache_dir(),
                help="where the tiny random model is kept between runs",
            )
            _add_run_options(p)
        elif name == "serve":
            _add_serve_options(p)
        elif name == "submit":
            _add_submit_options(p)
    return parser


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engines", type=Path, help="engines built by `hallo2rt build`")
    src.add_argument("--checkpoints", type=Path, help="the official pretrained_models/ (PyTorch)")
    p.add_argument("--replicas", type=int, default=1, help="generator replicas (one GPU each)")
    p.add_argument(
        "--max-replicas",
        type=int,
        help="autoscale: add generator replicas while jobs wait, up to this many",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this host only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--address", help="join this Ray cluster (e.g. auto, or head-ip:6379)")
    p.add_argument(
        "--results", type=Path, default=Path("hallo2rt-results"), help="where videos are kept"
    )
    p.add_argument("--keep-hours", type=float, default=24.0, help="keep finished videos this long")
    p.add_argument("--max-queue", type=int, default=16, help="jobs waiting or running; more: 429")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest uploaded file")
    p.add_argument("--max-audio-seconds", type=float, default=600.0, help="longest audio")
    p.add_argument("--token-file", type=Path, help="require 'Authorization: Bearer <its text>'")
    p.add_argument("--device", default="auto", help="cpu or cuda (auto: the engines' own)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="--checkpoints only")
    p.add_argument("--size", type=int, default=512, help="--checkpoints only: the generated side")
    p.add_argument("--no-page", action="store_true", help="the API only, no web page")
    p.add_argument(
        "--upscale",
        action="store_true",
        help="take requests' upscale 2 / 4: an SR deployment restores and upscales faces while "
        "the generators make the next clips (needs the super-resolution engines)",
    )
    p.add_argument("--sr-replicas", type=int, default=1, help="with --upscale: SR replicas")


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--image", required=True, type=Path, help="portrait image")
    p.add_argument("--audio", required=True, type=Path, help="driving audio")
    p.add_argument("--out", required=True, type=Path, help="where to write the MP4")
    p.add_argument("--face-embedding", type=Path, help="the face's ArcFace embedding (.npy)")
    p.add_argument("--token-file", type=Path, help="a file holding the server's bearer token")
    p.add_argument("--quiet", action="store_true", help="no progress")
    from hallo2rt.serve.jobs import FIELDS  # the options a request may carry

    for name, kind in FIELDS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help="as in generate")
