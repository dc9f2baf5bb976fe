"""``hallo2rt bench``: per-engine latency, end-to-end frames per second, the stage breakdown and
the official-style baseline, in one run (benchmarks/README.md explains every number).

Timers:
- engine latency: each generation engine alone on valid random inputs at its spec's opt sizes;
  ``warmup`` calls, then ``repeats`` timed calls (CUDA events around each call on a GPU,
  ``perf_counter`` on the CPU); median and p90.
- end to end: ``generate_video`` on the bundled portrait and a synthetic tone of ``clips``
  clips, from the start of the call (audio decode and features included) to the closed MP4;
  frames per second, real-time factor (generation seconds / audio seconds), time to the first
  clip handed to the encoder.
- generation only (the comparison with the baseline): clips from ``generate`` converted to host
  frames, no audio features and no encoding, timed the same way for both sides, each after one
  untimed warm-up clip.
- stage shares: engine medians times their calls per clip (per-video work spread over the
  clips), plus the measured encode time per clip.
- super-resolution (``--upscale``): ``SuperResolver`` over ``sr_frames`` frames of the bundled
  portrait (a real face for real detectors) after one untimed window; frames per second of the
  whole SR stage (detection to the blended uint8 frame, no encode), and per frame the seconds of
  each SR engine (device-synchronised around every call) and of the tensor work between them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engines.errors import OptionError
from ..engines.spec import GENERATION, SPEED_ENGINES, random_feed
from ..runtime.sampler import PRESETS, Sampling
from ..runtime.session import Session

# docs/model.md §5: denoiser FLOP per generated frame at 512 x 512, 16 frames, 40 steps, CFG 3.5
TFLOP_PER_FRAME = {"official": 137.9, "ours": 123.8}
STAGES = {  # engine -> stage of the breakdown
    "audio_encoder": "audio",
    "audio_proj": "audio",
    "image_proj": "reference",
    "face_locator": "reference",
    "vae_encoder": "reference",
    "reference_unet": "reference",
    "denoiser_step": "denoise",
    **{name: "denoise" for name in SPEED_ENGINES},
    "vae_decoder": "decode",
}


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures (recorded in every JSON line)."""

    steps: int = 40  # denoising steps per clip
    sampler: str = "ddim"  # runtime.sampler.SAMPLERS (a --preset sets it with the steps)
    guidance_steps: int | None = None  # both CFG halves on the first K steps (None: all)
    cache_interval: int = 1  # a full step every N steps (1: no feature cache)
    against: str | None = None  # a preset (runtime.sampler.PRESETS) to render beside, compared
    clips: int = 2  # clips in the end-to-end and baseline runs
    repeats: int = 10  # timed calls per engine
    warmup: int = 2  # untimed calls per engine first
    baseline: bool = False  # also run the official-style loop (needs checkpoint modules)
    cuda_graph: bool = True  # the runtime's step loop (GPU, TensorRT/torch engines)
    upscale: int = 1  # > 1: also time the super-resolution stage at this factor
    sr_frames: int = 28  # frames through SR (16 + 12: a first and a steady-state window)
    sr_only: bool = False  # time only the super-resolution stage (a session of its engines)
    sr_size: int = 512  # input frame side of an SR-only run (otherwise the generated size)

    def __post_init__(self) -> None:
        for name in ("steps", "clips", "repeats"):
            if getattr(self, name) < 1:
                raise OptionError(f"BenchConfig.{name} = {getattr(self, name)} must be >= 1")
        if self.warmup < 0:
            raise OptionError(f"BenchConfig.warmup = {self.warmup} must be >= 0")
        official = Sampling("ddim", self.steps)  # the official loop, at any step count
        if self.baseline and self.sampling != official:
            raise OptionError(
                "--baseline official runs the official DDIM loop; this run's "
                f"{self.sampling.describe()} would be compared with another sampler: bench a "
                "preset without --baseline (--against faithful compares it with the faithful "
                "loop)"
            )
        if self.against is not None and self.against not in PRESETS:
            raise OptionError(f"--against {self.against}: must be one of {', '.join(PRESETS)}")

    @property
    def sampling(self) -> Sampling:
        """The sampler, its steps and speed knobs (checks them)."""
        return Sampling(self.sampler, self.steps, self.guidance_steps, self.cache_interval)

    def engines(self) -> tuple[str, ...]:
        """The step engines this run calls (its own plan's and --against's)."""
        plans = [self.sampling] + ([PRESETS[self.against]] if self.against else [])
        return tuple(dict.fromkeys(n for p in plans for n in p.engines()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list:
    """Seconds per call of ``fn`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": p90 * 1e3,
        "min_ms": ordered[0] * 1e3,
        "calls": len(ordered),
    }


def engine_latencies(session: Session, cfg: BenchConfig) -> dict[str, dict[str, float]]:
    """Median / p90 latency of every generation engine (and the speed engines the session
    holds) on random inputs at opt sizes."""
    out = {}
    for name in GENERATION + tuple(n for n in SPEED_ENGINES if n in session.engines):
        engine = session.engines[name]
        feed = random_feed(engine.spec, engine.spec.sizes("opt"), seed=1, device=engine.device)
        with torch.inference_mode():
            times = time_calls(
                lambda e=engine, f=feed: e.infer(f), engine.device, cfg.warmup, cfg.repeats
            )
        out[name] = {**_summary(times), "sizes": engine.spec.sizes("opt")}
    return out


def calls_per_clip(session: Session, cfg: BenchConfig, clips: int) -> dict[str, float]:
    """How often each engine runs per clip in the runtime (per-video work spread over clips).
    The step engines: as often as this run's step plan calls them."""
    plan = cfg.sampling.plan()
    return {
        "audio_encoder": 1 / clips,  # one 60 s segment covers every clip measured here
        "audio_proj": 1,
        "image_proj": 1 / clips,
        "face_locator": 1 / clips,
        "vae_encoder": 1 + 1 / clips,  # motion frames; the reference once per video
        "reference_unet": 1 + 1 / clips,
        **{n: plan.count(n) for n in ("denoiser_step", *SPEED_ENGINES)},
        "vae_decoder": 1,
    }


def _portrait(size: int, embedding_dim: int):
    from hallo2rt.demo import ASSETS, DEMO_FACE_BOX, DEMO_LIP_BOX
    from hallo2rt.runtime.portrait import build_portrait, load_image, parse_box

    rgb = load_image(ASSETS / "portrait.jpg")
    emb = np.random.default_rng(0).standard_normal(embedding_dim).astype(np.float32)
    return build_portrait(rgb, size, parse_box(DEMO_FACE_BOX), emb, parse_box(DEMO_LIP_BOX))


def _features(session: Session, frames: int) -> torch.Tensor:
    """Random per-frame audio features of the encoder's width (generation-only runs)."""
    out = session.spec("audio_encoder").outputs[0].dims  # (1, frames, layers, C)
    g = torch.Generator().manual_seed(0)
    return torch.randn(frames, int(out[2]), int(out[3]), generator=g)


def _timed_clips(
    session: Session, cfg: BenchConfig, clips: Callable[[torch.Tensor], Any]
) -> dict[str, float]:
    """Frames per second of ``clips(features)`` (an iterable of (F, S, S, 3) host frames) over
    ``cfg.clips`` clips, after one untimed warm-up clip (first-call costs, graph capture)."""
    feats = _features(session, cfg.clips * session.frames)
    for _ in clips(feats[: session.frames]):
        pass
    _sync(session.device)
    start = time.perf_counter()
    first, n = None, 0
    for frames in clips(feats):
        n += frames.shape[0]
        first = first or time.perf_counter() - start
    seconds = time.perf_counter() - start
    return {"frames": n, "seconds": seconds, "fps": n / seconds, "first_clip_s": first}


def generation_only(session: Session, cfg: BenchConfig) -> dict[str, float]:
    """Clips from ``generate`` to host frames: the scope the baseline is compared in."""
    from hallo2rt.runtime.pipeline import RunConfig, generate

    run = RunConfig(frames=session.frames, cuda_graph=cfg.cuda_graph, **cfg.sampling.fields())
    portrait = _portrait(session.size, session.embedding_dim)

    def clips(feats):
        for clip in generate(session, portrait, feats, run):
            yield clip.frames

    return _timed_clips(session, cfg, clips)


def baseline_only(modules: dict, session: Session, cfg: BenchConfig) -> dict[str, float]:
    """The official-style loop (``benchmarks.baseline``) on the same weights and inputs."""
    from hallo2rt.runtime.pipeline import RunConfig

    from .baseline import official_clips

    run = RunConfig(steps=cfg.steps, frames=session.frames)
    portrait = _portrait(session.size, session.embedding_dim)
    dtype = next(modules["denoiser"].parameters()).dtype
    return _timed_clips(
        session,
        cfg,
        lambda feats: official_clips(modules, portrait, feats, run, session.device, dtype),
    )


class _TimedRuns:
    """A session proxy that adds up each engine's device-synchronised seconds and calls."""

    def __init__(self, session: Session):
        self.session, self.device = session, session.device
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def spec(self, name: str):
        return self.session.spec(name)

    def run(self, name: str, **inputs):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.session.run(name, **inputs)
        _sync(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        self.calls[name] = self.calls.get(name, 0) + 1
        return out


def sr_throughput(session: Session, cfg: BenchConfig) -> dict[str, Any]:
    """The super-resolution stage alone: frames per second and per-stage seconds per frame."""
    from hallo2rt.runtime.sr import SuperResolver

    size = cfg.sr_size if cfg.sr_only else session.size
    base = _portrait(size, 512).pixels.to(session.device)  # (1, 3, S, S); the face matters
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((cfg.sr_frames, 3, size, size), generator=g).to(session.device)
    frames = (base + 0.02 * noise).clamp(-1, 1)  # a moving-noise video of the portrait

    def run(sess, pixels) -> int:
        sr = SuperResolver(sess, size, size, cfg.upscale, 0.5)
        n = sum(o.shape[0] for o in sr.push(pixels))
        return n + sum(o.shape[0] for o in sr.flush())

    with torch.inference_mode():
        run(session, frames[:16])  # warm-up window
        timed = _TimedRuns(session)
        _sync(session.device)
        start = time.perf_counter()
        n = run(timed, frames)
        seconds = time.perf_counter() - start
    per_frame = {k: v / n for k, v in timed.seconds.items()}
    per_frame["alignment, masks, blending (tensor ops)"] = seconds / n - sum(per_frame.values())
    return {
        "frames": n,
        "upscale": cfg.upscale,
        "out_side": size * cfg.upscale,
        "seconds": seconds,
        "fps": n / seconds,
        "seconds_per_frame": per_frame,
        "calls": timed.calls,
    }


def end_to_end(
    session: Session,
    cfg: BenchConfig,
    workdir: Path,
    sampling: Sampling | None = None,
    name: str = "bench.mp4",
) -> dict[str, float]:
    """``generate_video`` with a synthetic tone of ``clips`` clips, to a finished MP4
    (``workdir/name``), with this run's sampling or ``sampling``."""
    from hallo2rt.demo import ASSETS, DEMO_FACE_BOX, DEMO_LIP_BOX
    from hallo2rt.runtime.pipeline import RunConfig, generate_video
    from hallo2rt.runtime.portrait import parse_box

    from .memory import _write_tone

    seconds_audio = cfg.clips * session.frames / 25
    audio = workdir / "tone.wav"
    _write_tone(audio, seconds_audio)
    first: list[float] = []
    start = time.perf_counter()

    def progress(p) -> None:
        if p.clip >= 1 and not first:
            first.append(time.perf_counter() - start)

    generate_video(
        session,
        ASSETS / "portrait.jpg",
        audio,
        workdir / name,
        parse_box(DEMO_FACE_BOX),
        np.random.default_rng(0).standard_normal(session.embedding_dim),
        RunConfig(
            frames=session.frames,
            size=session.size,
            cuda_graph=cfg.cuda_graph,
            **(sampling or cfg.sampling).fields(),
        ),
        lip_box=parse_box(DEMO_LIP_BOX),
        progress=progress,
    )
    seconds = time.perf_counter() - start
    frames = math.ceil(seconds_audio * 25)
    return {
        "frames": frames,
        "audio_seconds": seconds_audio,
        "seconds": seconds,
        "fps": frames / seconds,
        "real_time_factor": seconds / seconds_audio,
        "first_clip_s": first[0] if first else seconds,
    }


def _mouth_box(session: Session) -> tuple[int, int, int, int]:
    """The benchmark portrait's lip box in frame pixels (its lip mask's latent cells, x 8)."""
    lat = session.size // 8
    lips = _portrait(session.size, session.embedding_dim).lip_masks[0].reshape(lat, lat) > 0
    ys, xs = torch.nonzero(lips, as_tuple=True)
    if len(xs) == 0:
        return (0, 0, session.size, session.size)
    return (int(xs.min()) * 8, int(ys.min()) * 8, int(xs.max() + 1) * 8, int(ys.max() + 1) * 8)


def against(session: Session, cfg: BenchConfig, workdir: Path, e2e: dict) -> dict[str, Any]:
    """The run's MP4 (``end_to_end``'s) beside one rendered with preset ``cfg.against`` from the
    same inputs and seed on the same session: frames/s of both, the speed-up, and the deviation
    (``hallo2rt compare``: per-frame PSNR and SSIM, whole frame and mouth region)."""
    from .compare import compare_videos

    ref = end_to_end(session, cfg, workdir, PRESETS[cfg.against], "against.mp4")
    result = compare_videos(workdir / "against.mp4", workdir / "bench.mp4", _mouth_box(session))
    assert result.mouth_psnr is not None and result.mouth_ssim is not None
    return {
        "against": cfg.against,
        "against_sampling": PRESETS[cfg.against].describe(),
        "sampling": cfg.sampling.describe(),
        "fps": e2e["fps"],
        "against_fps": ref["fps"],
        "speedup": e2e["fps"] / ref["fps"],
        "frames_compared": result.compared,
        "psnr_mean": result.psnr.mean,
        "psnr_min": result.psnr.min,
        "ssim_mean": result.ssim.mean,
        "mouth": result.mouth,
        "mouth_psnr_mean": result.mouth_psnr.mean,
        "mouth_ssim_mean": result.mouth_ssim.mean,
        "problems": result.problems,
        "timer": "generate_video() to a closed MP4, each side once, same session and inputs",
    }


def encode_seconds_per_clip(session: Session, workdir: Path, repeats: int = 3) -> float:
    """H.264 encoding of one clip of random frames at the session's size (median)."""
    from hallo2rt.runtime.video import VideoWriter

    frames = np.random.default_rng(0).integers(
        0, 256, (session.frames, session.size, session.size, 3), dtype=np.uint8
    )
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        with VideoWriter(workdir / f"enc{i}.mp4", session.size, session.size) as w:
            w.write(frames)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage_shares(
    latency: dict, calls: dict[str, float], encode_s: float
) -> dict[str, dict[str, float]]:
    """Seconds per clip and share of each stage."""
    per_clip: dict[str, float] = {}
    for name, stats in latency.items():
        stage = STAGES[name]
        per_clip[stage] = per_clip.get(stage, 0.0) + stats["median_ms"] / 1e3 * calls[name]
    per_clip["encode"] = encode_s
    total = sum(per_clip.values())
    return {k: {"seconds_per_clip": v, "share": v / total} for k, v in per_clip.items()}


def gemm_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float | None:
    """Measured dense fp16 GEMM rate of this GPU (None on the CPU)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.float16)
    b = torch.randn(n, n, device=device, dtype=torch.float16)
    times = time_calls(lambda: a @ b, device, 3, repeats)
    return 2 * n**3 / statistics.median(times) / 1e12


def environment(session: Session) -> dict[str, Any]:
    from hallo2rt.engines.doctor import driver_version
    from hallo2rt.engines.manifest import environment as env

    out = env(str(session.device), "tensorrt")  # versions of torch, ORT and TensorRT (or None)
    out.update(
        platform=platform.platform(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        driver=driver_version() if session.device.type == "cuda" else None,
        engines=session.describe(),
        shapes={
            "size": getattr(session, "size", None),
            "frames": getattr(session, "frames", None),
            "motion": getattr(session, "motion_frames", None),
        },
    )
    return out


def run_benchmark(
    session: Session,
    cfg: BenchConfig,
    modules: dict | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """Every measurement as JSON-ready records (one per line in ``--json``)."""
    records: list[dict[str, Any]] = [
        {"kind": "config", **asdict(cfg)},
        {"kind": "environment", **environment(session)},
    ]
    dev = session.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    if cfg.sr_only:
        with session:
            log(f"super-resolution x{cfg.upscale} ...")
            records.append({"kind": "super_resolution", **sr_throughput(session, cfg), **_SR})
        records.append(_memory(dev))
        return records
    used: list[float] = []  # device memory in use after each phase

    def phase_done() -> None:
        now = device_used_mb(dev)
        if now is not None:
            used.append(now)

    with session, tempfile.TemporaryDirectory() as tmp:
        log("engine latencies ...")
        latency = engine_latencies(session, cfg)
        phase_done()
        for name, stats in latency.items():
            records.append(
                {
                    "kind": "engine",
                    "engine": name,
                    **stats,
                    "timer": "one infer() call, device-synchronised",
                }
            )
        log("generation ...")
        gen = generation_only(session, cfg)
        phase_done()
        records.append(
            {
                "kind": "generation",
                "side": "hallo2rt",
                **gen,
                "timer": "generate() clips to host uint8 frames; no audio, no encode",
            }
        )
        if cfg.baseline:
            if modules is None:
                raise OptionError("--baseline official needs the modules: --checkpoints/--random")
            log("official-style baseline ...")
            base = baseline_only(modules, session, cfg)
            phase_done()
            records.append(
                {
                    "kind": "generation",
                    "side": "official-style baseline",
                    **base,
                    "timer": "official_clips() to host uint8 frames; no audio, no encode",
                    "speedup": gen["fps"] / base["fps"],
                }
            )
        log("end to end ...")
        e2e = end_to_end(session, cfg, Path(tmp))
        phase_done()
        records.append(
            {
                "kind": "end_to_end",
                **e2e,
                "timer": "generate_video(): audio decode + features, clips, MP4 closed",
            }
        )
        if cfg.against:
            log(f"the same video with --preset {cfg.against} ...")
            records.append({"kind": "against", **against(session, cfg, Path(tmp), e2e)})
            phase_done()
        encode_s = encode_seconds_per_clip(session, Path(tmp))
        if cfg.upscale > 1:
            log(f"super-resolution x{cfg.upscale} ...")
            records.append({"kind": "super_resolution", **sr_throughput(session, cfg), **_SR})
            phase_done()
    shares = stage_shares(latency, calls_per_clip(session, cfg, cfg.clips), encode_s)
    records.append(
        {
            "kind": "stages",
            "stages": shares,
            "timer": "engine medians x calls per clip, plus encode per clip",
        }
    )
    step_s = latency["denoiser_step"]["median_ms"] / 1e3
    full = session.size == 512 and session.frames == 16
    tflop_step = _full_size_step_tflop() if full else None
    peak = gemm_tflops(dev)
    records.append(
        {
            "kind": "compute",
            "denoiser_tflop_per_step": tflop_step,
            "denoiser_tflops_achieved": tflop_step / step_s if tflop_step else None,
            "gpu_fp16_gemm_tflops_measured": peak,
            "share_of_gemm_peak": (tflop_step / step_s / peak) if tflop_step and peak else None,
            "note": "FLOPs counted on the released architecture's graphs at 512 x 512, 16 "
            "frames (benchmarks/flops.py); other shapes report none",
        }
    )
    records.append(_memory(dev, used))
    return records


def _full_size_step_tflop() -> float:
    from .flops import step_tflops

    return step_tflops("full")["denoiser_step"]


_SR = {
    "timer": "SuperResolver push+flush to uint8 frames after a warm-up window; engines "
    "device-synchronised per call; no encode"
}


def device_used_mb(dev: torch.device) -> float | None:
    """Memory in use on the whole GPU now (every allocator: torch's, TensorRT's, ORT's arenas),
    None on the CPU. Read between phases, never from a thread: cudaMemGetInfo during another
    thread's graph capture would break the capture."""
    if dev.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(dev)
    return (total - free) / 2**20


def _memory(dev: torch.device, used: list[float] | None = None) -> dict[str, Any]:
    """Peaks: host RSS; torch's allocator (misses TensorRT's and ORT's own memory); and the
    whole device's use, sampled at the end of each phase (``used``; arenas and pools do not
    shrink, so their peak is still in use at the phase's end)."""
    samples = [u for u in [*(used or []), device_used_mb(dev)] if u is not None]
    return {
        "kind": "memory",
        "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_peak_torch_allocated_mb": (
            torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
        ),
        "gpu_device_used_peak_mb": max(samples) if samples else None,
        "gpu_used_mb_at_end": samples[-1] if samples else None,
    }


def markdown(records: list[dict[str, Any]]) -> str:
    """The report as a Markdown table block."""
    env = next(r for r in records if r["kind"] == "environment")
    cfg = next(r for r in records if r["kind"] == "config")
    lines = [
        f"Device: {env.get('gpu') or env['machine'] + ' CPU'} ({env['cpus']} CPUs); torch "
        f"{env['torch']}, onnxruntime {env.get('onnxruntime')}, TensorRT {env.get('tensorrt')}; "
        + (
            f"super-resolution only, {', '.join(f'{k}: {v}' for k, v in env['engines'].items())}."
            if cfg.get("sr_only")
            else f"{env['shapes']['size']} px, {env['shapes']['frames']} frames per clip, "
            f"{_described(cfg)}, {cfg['clips']} clips."
        ),
    ]
    if not cfg.get("sr_only"):
        lines += ["", "| engine | backend | median ms | p90 ms |", "|---|---|---|---|"]
    for r in records:
        if r["kind"] == "engine":
            lines.append(
                f"| {r['engine']} | {env['engines'][r['engine']]} | "
                f"{r['median_ms']:.2f} | {r['p90_ms']:.2f} |"
            )
    if not cfg.get("sr_only"):
        lines += [
            "",
            "| run | frames | seconds | fps | first clip s | vs baseline |",
            "|---|---|---|---|---|---|",
        ]
    for r in records:
        if r["kind"] == "generation":
            ratio = f"{r['speedup']:.2f}x" if "speedup" in r else ""
            lines.append(
                f"| generation: {r['side']} | {r['frames']} | {r['seconds']:.2f} | "
                f"{r['fps']:.2f} | {r['first_clip_s']:.2f} | {ratio} |"
            )
        if r["kind"] == "end_to_end":
            lines.append(
                f"| end to end (MP4, RTF {r['real_time_factor']:.2f}) | {r['frames']} | "
                f"{r['seconds']:.2f} | {r['fps']:.2f} | {r['first_clip_s']:.2f} | |"
            )
    for r in records:
        if r["kind"] == "against":
            lines += [
                "",
                f"Against --preset {r['against']} ({r['against_sampling']}), same inputs and "
                "seed, end to end:",
                "",
                "| run | fps | speed-up | PSNR mean / min (dB) | SSIM mean | mouth PSNR / SSIM |",
                "|---|---|---|---|---|---|",
                f"| {r['against']} ({r['against_sampling']}) | {r['against_fps']:.2f} | 1.00x "
                "| | | |",
                f"| this run ({r['sampling']}) | {r['fps']:.2f} | {r['speedup']:.2f}x | "
                f"{r['psnr_mean']:.2f} / {r['psnr_min']:.2f} | {r['ssim_mean']:.4f} | "
                f"{r['mouth_psnr_mean']:.2f} / {r['mouth_ssim_mean']:.4f} |",
            ]
            if r["problems"]:
                lines.append("Checks: " + "; ".join(r["problems"]))
    for r in records:
        if r["kind"] == "stages":
            lines += ["", "| stage | s per clip | share |", "|---|---|---|"]
            for k, v in r["stages"].items():
                lines.append(f"| {k} | {v['seconds_per_clip']:.3f} | {v['share'] * 100:.1f}% |")
        if r["kind"] == "super_resolution":
            side = r["out_side"] // r["upscale"]
            lines += [
                "",
                f"Super-resolution x{r['upscale']} ({side} -> {r['out_side']} px): "
                f"{r['fps']:.2f} frames/s over {r['frames']} frames",
                "",
                "| SR stage | ms per frame | calls |",
                "|---|---|---|",
            ]
            for k, v in r["seconds_per_frame"].items():
                lines.append(f"| {k} | {v * 1e3:.1f} | {r['calls'].get(k, '')} |")
    comp = next((r for r in records if r["kind"] == "compute"), {})
    mem = next(r for r in records if r["kind"] == "memory")
    if comp.get("denoiser_tflops_achieved"):
        lines.append(
            f"\ndenoiser_step: {comp['denoiser_tflops_achieved']:.1f} TFLOP/s achieved"
            + (
                f", {comp['share_of_gemm_peak'] * 100:.0f}% of the measured "
                f"{comp['gpu_fp16_gemm_tflops_measured']:.0f} TFLOP/s fp16 GEMM"
                if comp["share_of_gemm_peak"]
                else ""
            )
        )
    lines.append(
        f"\nHost peak RSS {mem['host_peak_rss_mb']:.0f} MB"
        + (
            f"; GPU peak (torch allocator) {mem['gpu_peak_torch_allocated_mb']:.0f} MB, "
            f"device in use at most {mem['gpu_device_used_peak_mb']:.0f} MB (all allocators, "
            "sampled after each phase)"
            if mem["gpu_peak_torch_allocated_mb"] is not None
            else ""
        )
    )
    return "\n".join(lines)


def _described(cfg: dict[str, Any]) -> str:
    """The sampling of a config record (records written before the speed knobs lack them)."""
    return Sampling(
        cfg.get("sampler", "ddim"),
        cfg["steps"],
        cfg.get("guidance_steps"),
        cfg.get("cache_interval", 1),
    ).describe()


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """A stacked bar of the stage breakdown (seconds per clip), drawn with Pillow."""
    from PIL import Image, ImageDraw

    stages = next(r for r in records if r["kind"] == "stages")["stages"]
    colors = {
        "audio": "#4e79a7",
        "reference": "#f28e2b",
        "denoise": "#e15759",
        "decode": "#76b7b2",
        "encode": "#59a14f",
        "sr": "#edc948",
    }
    width, height, left, bar_h = 800, 220, 20, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    total = sum(v["seconds_per_clip"] for v in stages.values()) or 1.0
    x = left
    span = width - 2 * left
    draw.text((left, 10), f"seconds per clip: {total:.3f} (stage shares)", fill="black")
    for i, (name, v) in enumerate(stages.items()):
        w = span * v["seconds_per_clip"] / total
        draw.rectangle([x, 40, x + w, 40 + bar_h], fill=colors.get(name, "#999999"))
        x += w
        ly = 120 + 18 * (i % 5)
        lx = left + 380 * (i // 5)
        draw.rectangle([lx, ly, lx + 12, ly + 12], fill=colors.get(name, "#999999"))
        draw.text(
            (lx + 18, ly),
            f"{name}: {v['seconds_per_clip']:.3f} s ({v['share'] * 100:.1f}%)",
            fill="black",
        )
    img.save(path)


def write_json_lines(records: list[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
