"""``hallo2rt proof``: every GPU fact the project claims, gathered by one command in one budget.

Sections run in order of importance, each reported as done, skipped (with the reason) or failed
(with the error), one JSON line as soon as it ends, so a run cut short still leaves what it
measured. A section starts only if its estimated time fits the budget left. On a GPU the model is
the released architecture with seeded random weights built directly in GPU memory (fp32 and
fp16; nothing written to disk); on a CPU the tiny model runs every section that needs no GPU.

Two kinds of check: a *gate* is correctness (fp16 against fp32, graph replay against eager
launches, the CUDA-graph mode, a race-free copy): a missed gate makes the command exit 1. A
*target* is the issue's speed goal (frames per second, share of the GEMM rate): a miss is
reported, not an error. Every timer is described in benchmarks/README.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engines.errors import OptionError, SetupError
from ..engines.spec import ENGINE_NAMES, FP32_ONLY, GENERATION, SUPER_RESOLUTION, random_feed
from .bench import BenchConfig

# the targets for the full-size model on one H200 (512 px, 40 steps, CFG 3.5)
TARGET_E2E_FPS = 3.2
TARGET_SPEEDUP = 2.0
TARGET_GEMM_SHARE = 0.55
GATE_PSNR_DB = 35.0
GATE_COSINE = 0.999


@dataclass(frozen=True)
class ProofConfig:
    """What one proof run covers (recorded in its first JSON line)."""

    budget_s: float = 480.0  # wall-clock seconds for all sections together
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    size: str = "auto"  # model size: auto (full on a GPU, tiny on a CPU), tiny or full
    steps: int = 40  # DDIM steps of every generated clip
    clips: int = 1  # timed clips per generation measurement (after one warm-up clip)
    seed: int = 0  # weights and inputs
    only: tuple[str, ...] = ()  # run just these sections (the others: skipped)

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise OptionError(f"--budget {self.budget_s}: must be > 0 seconds")
        if self.size not in ("auto", "tiny", "full"):
            raise OptionError(f"--size {self.size!r}: expected auto, tiny or full")
        if self.steps < 1 or self.clips < 1:
            raise OptionError("--steps and --clips must be >= 1")
        unknown = sorted(set(self.only) - {s.name for s in SECTIONS})
        if unknown:
            raise OptionError(f"--only: unknown sections {unknown}; known: {section_names()}")


@dataclass
class Context:
    """What the sections share: the device, the model, the sessions, the clock."""

    cfg: ProofConfig
    device: torch.device
    size: str  # "tiny" | "full"
    deadline: float
    workdir: Path
    cache: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def shapes(self):
        from hallo2rt.export.graphs import GraphShapes

        return GraphShapes() if self.size == "full" else GraphShapes(size=64, frames=16)

    def pretrained(self, fp16: bool):
        """The random model; in fp16 the components that stay fp32 (FP32_ONLY) are fp32, as
        a real fp16 run loads them."""
        from hallo2rt.export.modules import COMPONENTS
        from hallo2rt.random_weights import random_pretrained

        def make():
            seed, dev = self.cfg.seed, self.device
            if not fp16:
                return random_pretrained(self.size, seed, dev, torch.float32)
            half = [c for c in COMPONENTS if c not in FP32_ONLY]
            pre = random_pretrained(self.size, seed, dev, torch.float16, half)
            full = random_pretrained(self.size, seed, dev, torch.float32, FP32_ONLY)
            pre.modules.update(full.modules)
            return pre

        return self.once("pre16" if fp16 else "pre32", make)

    def session(self, fp16: bool):
        """An open Session of torch engines (generation and super-resolution)."""
        from hallo2rt.assemble import session_from_pretrained

        def make():
            names = GENERATION + SUPER_RESOLUTION
            s = session_from_pretrained(
                self.pretrained(fp16), self.shapes(), self.device, fp16, names
            )
            return s.__enter__()

        return self.once("session16" if fp16 else "session32", make)

    @property
    def fp16(self) -> bool:
        """The deployment precision here: fp16 on a GPU, fp32 on a CPU."""
        return self.gpu

    def bench_config(self, **kw) -> BenchConfig:
        return BenchConfig(steps=self.cfg.steps, clips=self.cfg.clips, **kw)

    def close(self) -> None:
        for key in ("session16", "session32"):
            if key in self.cache:
                self.cache[key].__exit__(None, None, None)


@dataclass(frozen=True)
class Section:
    name: str
    does: str  # one line for the report
    seconds: dict[str, float]  # estimated seconds by model size: whether it fits the budget
    run: Callable[[Context], dict[str, Any]]
    needs_gpu: bool = False


def _check(what: str, value: float | None, bound: float, kind: str, above: bool = True) -> dict:
    ok = (
        value is not None
        and not math.isnan(value)
        and (value >= bound if above else value <= bound)
    )
    return {"what": what, "value": value, "bound": bound, "kind": kind, "ok": bool(ok)}


# --- sections --------------------------------------------------------------------------------


def _environment(ctx: Context) -> dict[str, Any]:
    from hallo2rt.engines.doctor import driver_version
    from hallo2rt.engines.manifest import environment

    env = environment(str(ctx.device), "tensorrt")
    env.update(
        driver=driver_version() if ctx.gpu else None, model=ctx.size, budget_s=ctx.cfg.budget_s
    )
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = None
    return {"result": env}


def _weights(ctx: Context) -> dict[str, Any]:
    out = {}
    for fp16 in (False, True) if ctx.gpu else (False,):
        start = time.perf_counter()
        pre = ctx.pretrained(fp16)
        tensors = [t for m in pre.modules.values() for t in m.state_dict().values()]
        floats = [t for t in tensors if t.is_floating_point()]
        out["fp16" if fp16 else "fp32"] = {
            "seconds": time.perf_counter() - start,
            "parameters": sum(t.numel() for t in floats),
            "gb": sum(t.numel() * t.element_size() for t in floats) / 1e9,
            "all_zero_tensors": sum(1 for t in floats if not t.any()),
            "device": str(floats[0].device),
        }
    checks = [
        _check(f"{k}: tensors that are all zeros", v["all_zero_tensors"], 0, "gate", above=False)
        for k, v in out.items()
    ]
    return {"result": out, "checks": checks}


def _step_loop(ctx: Context) -> dict[str, Any]:
    """The 40-step loop on the fp16 denoiser: captured as one CUDA graph, replay vs eager."""
    from hallo2rt.engines.bank import LOOP_INPUTS
    from hallo2rt.runtime.sampler import ddim_schedule
    from hallo2rt.runtime.steploop import StepLoop

    from .bench import time_calls

    session = ctx.session(fp16=True)
    spec = session.spec("denoiser_step")
    feed = random_feed(spec, spec.sizes("opt"), seed=ctx.cfg.seed, device=ctx.device)
    noise = feed.pop("latents")
    const = {k: v for k, v in feed.items() if k not in LOOP_INPUTS}
    loop = StepLoop(session, ddim_schedule(ctx.cfg.steps), 3.5, cuda_graph=True)
    with torch.inference_mode():
        graph = loop(const, noise)  # captures, then replays
        eager = loop(const, noise, eager=True)
        replay_s = time_calls(lambda: loop(const, noise), ctx.device, 0, 2)
        eager_s = time_calls(lambda: loop(const, noise, eager=True), ctx.device, 0, 1)
    diff = (graph.float() - eager.float()).abs().max().item()
    result = {
        "mode": loop.mode,
        "steps": loop.steps,
        "replay_s_per_clip": min(replay_s),
        "eager_s_per_clip": min(eager_s),
        "graph_speedup": min(eager_s) / min(replay_s),
        "max_abs_diff_replay_vs_eager": diff,
        "finite": bool(torch.isfinite(graph).all()),
    }
    checks = [
        _check("mode is cuda-graph (1 = yes)", float(loop.mode == "cuda-graph"), 1, "gate"),
        _check("replay vs eager max |diff|", diff, 0.0, "gate", above=False),
    ]
    return {"result": result, "checks": checks}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def _engine_parity(ctx: Context) -> dict[str, Any]:
    """Every engine, fp16 against fp32 on the GPU, on the same random inputs (the FP32_ONLY
    engines run fp32 in both: a determinism check)."""
    s32, s16 = ctx.session(fp16=False), ctx.session(fp16=True)
    out, checks = {}, []
    with torch.inference_mode():
        for name in ENGINE_NAMES:
            spec = s32.spec(name)
            feed = random_feed(spec, spec.sizes("opt"), seed=ctx.cfg.seed, device=ctx.device)
            want = {k: v.clone() for k, v in s32.run(name, **feed).items()}
            got = s16.run(name, **feed)
            cos = {k: _cosine(got[k], want[k]) for k in want}
            worst = min(cos, key=cos.get)
            out[name] = {
                "min_cosine": cos[worst],
                "worst_output": worst,
                "outputs": len(cos),
                "fp16": name not in FP32_ONLY,
            }
            checks.append(
                _check(f"{name} fp16 vs fp32 min cosine", cos[worst], GATE_COSINE, "gate")
            )
    return {"result": out, "checks": checks}


def _one_clip(ctx: Context, session) -> np.ndarray:
    from hallo2rt.runtime.pipeline import RunConfig, generate

    from .bench import _features, _portrait

    portrait = _portrait(session.size, session.embedding_dim)
    feats = _features(session, session.frames)
    run = RunConfig(steps=ctx.cfg.steps, frames=session.frames)
    with torch.inference_mode():
        return np.concatenate([c.frames for c in generate(session, portrait, feats, run)])


def psnr_per_frame(a: np.ndarray, b: np.ndarray) -> list[float]:
    """PSNR (dB) of each (H, W, 3) uint8 frame of ``a`` against ``b``."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff**2).reshape(len(a), -1).mean(1)
    return [float(10 * np.log10(255.0**2 / max(m, 1e-12))) for m in mse]


def _clip_psnr(ctx: Context) -> dict[str, Any]:
    """One clip (512 px, 16 frames, all steps) decoded by the fp16 and the fp32 runtime."""
    want = _one_clip(ctx, ctx.session(fp16=False))
    got = _one_clip(ctx, ctx.session(fp16=True))
    psnr = psnr_per_frame(got, want)
    result = {"frames": len(psnr), "psnr_db": psnr, "min_psnr_db": min(psnr)}
    return {
        "result": result,
        "checks": [_check("fp16 clip min PSNR (dB)", min(psnr), GATE_PSNR_DB, "gate")],
    }


def _generation(ctx: Context) -> dict[str, Any]:
    """Generation frames/s of the runtime and of the official-style loop, same weights/inputs."""
    from hallo2rt.export.checkpoints import GENERATION_COMPONENTS

    from .bench import baseline_only, generation_only

    session = ctx.session(fp16=ctx.fp16)
    modules = {
        k: v for k, v in ctx.pretrained(ctx.fp16).modules.items() if k in GENERATION_COMPONENTS
    }
    bcfg = ctx.bench_config()
    ours = generation_only(session, bcfg)
    base = baseline_only(modules, session, bcfg)
    speedup = ours["fps"] / base["fps"]
    result = {"hallo2rt": ours, "baseline": base, "speedup": speedup}
    checks = [_check("runtime / official-style baseline", speedup, TARGET_SPEEDUP, "target")]
    return {"result": result, "checks": checks if ctx.size == "full" else []}


def _end_to_end(ctx: Context) -> dict[str, Any]:
    from .bench import end_to_end

    e2e = end_to_end(ctx.session(fp16=ctx.fp16), ctx.bench_config(), ctx.workdir)
    checks = [_check("end-to-end frames/s to the MP4", e2e["fps"], TARGET_E2E_FPS, "target")]
    return {"result": e2e, "checks": checks if ctx.size == "full" else []}


def _compute(ctx: Context) -> dict[str, Any]:
    """Engine latencies, the denoiser's TFLOP/s and the measured dense fp16 GEMM rate."""
    from .bench import TFLOP_PER_FRAME, engine_latencies, gemm_tflops

    session = ctx.session(fp16=True)
    latency = engine_latencies(session, BenchConfig(repeats=5, warmup=2))
    step_s = latency["denoiser_step"]["median_ms"] / 1e3
    tflop_step = TFLOP_PER_FRAME["ours"] * session.frames / 40 if ctx.size == "full" else None
    peak = gemm_tflops(ctx.device)
    achieved = tflop_step / step_s if tflop_step else None
    share = achieved / peak if achieved and peak else None
    result = {
        "engine_median_ms": {k: v["median_ms"] for k, v in latency.items()},
        "denoiser_tflop_per_step": tflop_step,
        "denoiser_tflops": achieved,
        "gemm_fp16_tflops": peak,
        "share_of_gemm": share,
    }
    checks = [_check("denoiser share of the fp16 GEMM rate", share, TARGET_GEMM_SHARE, "target")]
    return {"result": result, "checks": checks if ctx.size == "full" else []}


def _super_resolution(ctx: Context) -> dict[str, Any]:
    """The SR stage x4 (512 -> 2048 at full size) over one window after a warm-up window."""
    from .bench import sr_throughput

    session = ctx.session(fp16=ctx.fp16)
    bcfg = ctx.bench_config(upscale=4, sr_frames=16, sr_only=True, sr_size=session.size)
    return {"result": sr_throughput(session, bcfg)}


def _memory(ctx: Context) -> dict[str, Any]:
    from .bench import _memory as peaks

    out = peaks(ctx.device)
    del out["kind"]
    if ctx.gpu:
        out["gpu_peak_torch_reserved_mb"] = torch.cuda.max_memory_reserved(ctx.device) / 2**20
        out["note"] = "device figures count every allocator; torch's only its own"
    return {"result": out}


def _tiny_tree(ctx: Context) -> tuple[Path, Any]:
    """The tiny model written once (ONNX export reads checkpoint files) and its export."""

    def make():
        from hallo2rt.export.graphs import GraphShapes
        from hallo2rt.export.onnx import export_engines
        from hallo2rt.random_weights import make_random_pretrained

        root = ctx.workdir / "tiny_models"
        make_random_pretrained(root, "tiny", seed=ctx.cfg.seed, include_unused=False)
        shapes = GraphShapes(size=64, frames=16)
        export_engines(root, ctx.workdir / "tiny_onnx", list(GENERATION), shapes)
        return root, shapes

    return ctx.once("tiny_tree", make)


def _against_torch(ctx: Context, engines_dir: Path) -> dict[str, Any]:
    """One clip on built engines against the same clip on torch engines (tiny model, GPU)."""
    from hallo2rt.assemble import load_torch_session
    from hallo2rt.runtime.sampler import ddim_schedule
    from hallo2rt.runtime.session import Session
    from hallo2rt.runtime.steploop import step_loop

    root, shapes = _tiny_tree(ctx)
    with Session.open(engines_dir, ctx.device) as built:
        got = _one_clip(ctx, built)
        loop_mode = step_loop(built, ddim_schedule(ctx.cfg.steps), 3.5).mode  # the one used
    with load_torch_session(root, str(ctx.device), size=shapes.size, frames=shapes.frames) as ref:
        want = _one_clip(ctx, ref)
    psnr = psnr_per_frame(got, want)
    return {"min_psnr_db_vs_torch": min(psnr), "step_loop": loop_mode}


def _onnxruntime_cuda(ctx: Context) -> dict[str, Any]:
    """The ORT CUDA path on the tiny model: an fp32 build with CUDA graphs (its build check is
    the 1e-4 gate that TF32 would fail), then a clip against torch."""
    import onnxruntime

    from hallo2rt.engines.build import BuildConfig, build_engines

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {
            "skipped": "onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu)"
        }
    _tiny_tree(ctx)
    out = ctx.workdir / "ort_cuda"
    config = BuildConfig("onnxruntime", str(ctx.device), cuda_graph=True)
    manifests = build_engines(ctx.workdir / "tiny_onnx", out, config, only=list(GENERATION))
    worst = max(v["rel"] for m in manifests.values() if m.parity for v in m.parity.numbers())
    result = {"build_max_rel": worst, **_against_torch(ctx, out)}
    checks = [
        _check("clip vs torch min PSNR (dB)", result["min_psnr_db_vs_torch"], GATE_PSNR_DB, "gate")
    ]
    return {"result": result, "checks": checks}


def _tensorrt(ctx: Context) -> dict[str, Any]:
    """TensorRT on the tiny model: fp32 build (checked against ONNX), the step loop captured."""
    try:
        import tensorrt
    except ImportError:
        return {"skipped": "tensorrt does not import here (pip install tensorrt, NVIDIA's index)"}
    from hallo2rt.engines.build import BuildConfig, build_engines

    _tiny_tree(ctx)
    out = ctx.workdir / "trt"
    build_engines(ctx.workdir / "tiny_onnx", out, BuildConfig("tensorrt", str(ctx.device)))
    result = {"tensorrt": tensorrt.__version__, **_against_torch(ctx, out)}
    checks = [
        _check("clip vs torch min PSNR (dB)", result["min_psnr_db_vs_torch"], GATE_PSNR_DB, "gate"),
        _check(
            "TensorRT loop is cuda-graph (1 = yes)",
            float(result["step_loop"] == "cuda-graph"),
            1,
            "gate",
        ),
    ]
    return {"result": result, "checks": checks}


def _sanitizer(ctx: Context) -> dict[str, Any]:
    """One upscaled clip (tiny model) in a child process under TORCH_CUDA_SANITIZER=1, which
    reports unsynchronised accesses of one tensor from two streams (the SR-frame copy race)."""
    env = {**os.environ, "TORCH_CUDA_SANITIZER": "1"}
    cmd = [sys.executable, "-m", "hallo2rt.benchmarks.proof", "upscaled-clip", str(ctx.device)]
    timeout = max(30.0, ctx.left())
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    text = res.stdout + res.stderr
    races = text.count("CSAN detected a possible data race")
    result = {"returncode": res.returncode, "races": races, "tail": text[-2000:]}
    checks = [
        _check("child exit code", res.returncode, 0, "gate", above=False),
        _check("races reported", races, 0, "gate", above=False),
    ]
    return {"result": result, "checks": checks}


def upscaled_clip(device: str) -> None:
    """The sanitizer child: one tiny clip generated and upscaled x2 to an MP4."""
    from hallo2rt.assemble import session_from_pretrained
    from hallo2rt.demo import ASSETS, DEMO_FACE_BOX, DEMO_LIP_BOX
    from hallo2rt.export.graphs import GraphShapes, fit_shapes
    from hallo2rt.random_weights import random_pretrained
    from hallo2rt.runtime.pipeline import RunConfig, generate_video
    from hallo2rt.runtime.portrait import parse_box

    from .memory import _write_tone

    pre = random_pretrained("tiny", 0, device)
    shapes = fit_shapes(GraphShapes(size=64, frames=16), pre)
    session = session_from_pretrained(pre, shapes, device, names=GENERATION + SUPER_RESOLUTION)
    with tempfile.TemporaryDirectory() as tmp, session:
        _write_tone(Path(tmp) / "a.wav", 0.64)
        generate_video(
            session,
            ASSETS / "portrait.jpg",
            Path(tmp) / "a.wav",
            Path(tmp) / "out.mp4",
            parse_box(DEMO_FACE_BOX),
            np.random.default_rng(0).standard_normal(session.embedding_dim),
            RunConfig(steps=4, frames=16, size=64, upscale=2),
            lip_box=parse_box(DEMO_LIP_BOX),
        )
    print("upscaled clip written")


SECTIONS = (  # in order of importance: what the budget cuts first comes last
    Section(
        "environment",
        "GPU, driver, CUDA, torch / ORT / TensorRT versions",
        {"tiny": 5, "full": 10},
        _environment,
    ),
    Section(
        "weights",
        "seeded random weights built in device memory, fp32 (and fp16 on a GPU)",
        {"tiny": 10, "full": 40},
        _weights,
    ),
    Section(
        "step_loop",
        "the step loop captured as one CUDA graph: replay vs eager, timed",
        {"tiny": 10, "full": 60},
        _step_loop,
        needs_gpu=True,
    ),
    Section(
        "engine_parity",
        "every engine fp16 vs fp32 (cosine per output)",
        {"tiny": 10, "full": 30},
        _engine_parity,
        needs_gpu=True,
    ),
    Section(
        "generation",
        "generation frames/s: runtime vs the official-style loop",
        {"tiny": 30, "full": 60},
        _generation,
    ),
    Section(
        "end_to_end",
        "end-to-end frames/s to the MP4 (audio features, clips, encode)",
        {"tiny": 20, "full": 30},
        _end_to_end,
    ),
    Section(
        "compute",
        "engine latencies; denoiser TFLOP/s against the fp16 GEMM rate",
        {"tiny": 10, "full": 20},
        _compute,
        needs_gpu=True,
    ),
    Section(
        "clip_psnr",
        "one clip decoded in fp16 against fp32 (PSNR per frame)",
        {"tiny": 20, "full": 90},
        _clip_psnr,
        needs_gpu=True,
    ),
    Section(
        "super_resolution",
        "the SR stage x4 over one window, frames/s",
        {"tiny": 20, "full": 40},
        _super_resolution,
    ),
    Section(
        "sanitizer",
        "an upscaled clip under TORCH_CUDA_SANITIZER=1",
        {"tiny": 60, "full": 60},
        _sanitizer,
        needs_gpu=True,
    ),
    Section(
        "onnxruntime_cuda",
        "ORT CUDA provider: fp32 build (the TF32 gate), CUDA graphs, a clip",
        {"tiny": 60, "full": 60},
        _onnxruntime_cuda,
        needs_gpu=True,
    ),
    Section(
        "tensorrt",
        "TensorRT: build, the captured loop, a clip against torch",
        {"tiny": 90, "full": 90},
        _tensorrt,
        needs_gpu=True,
    ),
    Section(
        "memory",
        "peak memory (torch allocator, device, host)",
        {"tiny": 1, "full": 1},
        _memory,
    ),
)


def section_names() -> list[str]:
    return [s.name for s in SECTIONS]


def _run_section(section: Section, ctx: Context) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": "section", "section": section.name, "does": section.does}
    need = section.seconds[ctx.size]
    if ctx.cfg.only and section.name not in ctx.cfg.only:
        return {**record, "status": "skipped", "reason": "not in --only"}
    if section.needs_gpu and not ctx.gpu:
        return {**record, "status": "skipped", "reason": "needs a CUDA GPU (none here)"}
    if ctx.left() < need:
        reason = f"budget: {ctx.left():.0f} s left, needs ~{need:.0f} s (raise --budget)"
        return {**record, "status": "skipped", "reason": reason}
    start = time.perf_counter()
    try:
        out = section.run(ctx)
    except Exception as exc:  # reported, and the next section runs
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
    else:
        if "skipped" in out:
            record.update(status="skipped", reason=out["skipped"])
        else:
            record.update(status="done", result=out["result"], checks=out.get("checks", []))
    if ctx.gpu:
        torch.cuda.synchronize(ctx.device)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def run_proof(
    cfg: ProofConfig, out_dir: Path, log: Callable[[str], None] = lambda s: None
) -> list[dict[str, Any]]:
    """Run every section within ``cfg.budget_s``; write ``proof.jsonl`` (a line per section, as
    it ends) and ``proof.md`` into ``out_dir``; return the records."""
    dev_name = (
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    device = torch.device(dev_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda: torch sees no CUDA GPU here")
    size = cfg.size if cfg.size != "auto" else ("full" if device.type == "cuda" else "tiny")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = out_dir / "proof.jsonl"
    records = [{"kind": "config", **asdict(cfg), "resolved_device": str(device), "model": size}]
    lines.write_text(json.dumps(records[0]) + "\n")
    with tempfile.TemporaryDirectory(prefix="hallo2rt-proof-") as tmp:
        ctx = Context(cfg, device, size, time.perf_counter() + cfg.budget_s, Path(tmp))
        try:
            for section in SECTIONS:
                log(f"{section.name} ...")
                record = _run_section(section, ctx)
                records.append(record)
                with lines.open("a") as f:
                    f.write(json.dumps(record, default=str) + "\n")
                log(f"  {record['status']} {record.get('reason', record.get('error', ''))}")
        finally:
            ctx.close()
    (out_dir / "proof.md").write_text(markdown(records) + "\n")
    return records


def failed(records: list[dict[str, Any]]) -> list[str]:
    """Sections that failed and gates that were missed (what makes the command exit 1)."""
    out = [f"{r['section']}: {r['error']}" for r in records if r.get("status") == "failed"]
    for r in records:
        for c in r.get("checks", []):
            if c["kind"] == "gate" and not c["ok"]:
                out.append(f"{r['section']}: {c['what']} = {c['value']} (gate {c['bound']})")
    return out


def _headline(r: dict[str, Any]) -> str:
    """The one number that says most about a done section."""
    res = r.get("result", {})
    pick = {
        "environment": lambda: f"{res.get('gpu') or 'CPU'}; torch {res.get('torch')}",
        "weights": lambda: ", ".join(
            f"{k} {v['gb']:.2f} GB in {v['seconds']:.0f} s" for k, v in res.items()
        ),
        "step_loop": lambda: f"{res['mode']}; {res['graph_speedup']:.2f}x vs eager",
        "engine_parity": lambda: f"min cosine {min(v['min_cosine'] for v in res.values()):.6f}",
        "generation": lambda: (
            f"{res['hallo2rt']['fps']:.2f} vs {res['baseline']['fps']:.2f} frames/s "
            f"({res['speedup']:.2f}x)"
        ),
        "end_to_end": lambda: f"{res['fps']:.2f} frames/s, first clip {res['first_clip_s']:.1f} s",
        "compute": lambda: (
            f"denoiser step {res['engine_median_ms']['denoiser_step']:.1f} ms"
            + (f", {res['share_of_gemm'] * 100:.0f}% of GEMM" if res.get("share_of_gemm") else "")
        ),
        "clip_psnr": lambda: f"min {res['min_psnr_db']:.1f} dB",
        "super_resolution": lambda: f"{res['fps']:.2f} frames/s to {res['out_side']} px",
        "sanitizer": lambda: f"{res['races']} races, exit {res['returncode']}",
        "onnxruntime_cuda": lambda: f"{res['min_psnr_db_vs_torch']:.1f} dB vs torch",
        "tensorrt": lambda: f"{res['min_psnr_db_vs_torch']:.1f} dB vs torch; {res['step_loop']}",
        "memory": lambda: (
            f"device in use {res['gpu_device_used_peak_mb']:.0f} MB"
            if res.get("gpu_device_used_peak_mb")
            else f"host RSS {res['host_peak_rss_mb']:.0f} MB"
        ),
    }
    try:
        return pick[r["section"]]()
    except (KeyError, TypeError, ValueError):
        return ""


def markdown(records: list[dict[str, Any]]) -> str:
    """The report: one row per section, then every check."""
    cfg = records[0]
    lines = [
        f"hallo2rt proof: {cfg['model']} model on {cfg['resolved_device']}, {cfg['steps']} steps, "
        f"budget {cfg['budget_s']:.0f} s",
        "",
        "| section | status | s | result |",
        "|---|---|---|---|",
    ]
    for r in records[1:]:
        what = _headline(r) if r["status"] == "done" else r.get("reason", r.get("error", ""))
        lines.append(f"| {r['section']} | {r['status']} | {r.get('seconds', '')} | {what} |")
    checks = [(r["section"], c) for r in records for c in r.get("checks", [])]
    if checks:
        lines += ["", "| check | kind | value | bound | ok |", "|---|---|---|---|---|"]
        for section, c in checks:
            value = c["value"] if not isinstance(c["value"], float) else f"{c['value']:.4g}"
            lines.append(
                f"| {section}: {c['what']} | {c['kind']} | {value} | {c['bound']} | "
                f"{'yes' if c['ok'] else 'NO'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":  # the sanitizer's child process
    if sys.argv[1:2] == ["upscaled-clip"]:
        upscaled_clip(sys.argv[2])
