"""Speed presets: their cost (TFLOP per generated frame at full size) and, on a model at hand,
their speed and deviation from the faithful output, measured in one run.

    python -m hallo2rt.benchmarks.presets --out benchmarks/results/presets   # tiny demo model
    python -m hallo2rt.benchmarks.presets --full-size 64   # released architecture at 64 px

Cost: each step engine's TFLOP counted on its full-size graph (``benchmarks/flops.py``: 512
px, 16 frames); a preset's cost per frame is the sum over its step plan plus the official
per-clip work (docs/model.md §5.2), over 16 frames. The multistep sampler's extra element-wise
ops (three on the 1x4x16x64x64 latents per step) are below 1e-5 TFLOP.

Speed and deviation: each preset renders the same portrait, audio, face box, embedding and seed
(the demo's) on the same session; the timer covers generate_video whole (features, every clip,
decoding and encoding the MP4); then ``hallo2rt compare`` measures each against faithful. With
random weights the deviation says nothing about quality; with the real checkpoints it is the
user's gate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from .compare import compare_videos

# docs/model.md §5.2 (TFLOP, full size: 512 px, 16-frame clips): the official per-clip work
# besides the denoiser (VAE decode and encode, ReferenceNet, ...); the runtime does less (§6),
# so this is an upper bound that every preset keeps
PER_CLIP = 40.23 + 4.78 + 3.35 + 0.139 + 0.0069 + 0.0012
FRAMES = 16


def tflop_per_frame(sampling, per_call: dict[str, float] | None = None) -> float:
    """Full-size TFLOP per generated frame of a run with ``sampling`` (runtime.sampler.Sampling):
    the step engines its plan calls, each at its counted cost (``flops.step_tflops``), plus the
    per-clip work, over 16 frames."""
    from .flops import step_tflops

    per_call = per_call or step_tflops("full")
    return (sum(per_call[name] for name in sampling.plan()) + PER_CLIP) / FRAMES


def costs(per_call: dict[str, float] | None = None) -> list[dict]:
    from ..runtime.sampler import PRESETS

    base = tflop_per_frame(PRESETS["faithful"], per_call)
    return [
        {
            "preset": name,
            "sampler": p.sampler,
            "steps": p.steps,
            "guidance_steps": p.guided,
            "cache_interval": p.cache_interval,
            "tflop_per_frame": round(tflop_per_frame(p, per_call), 2),
            "vs_faithful": round(tflop_per_frame(p, per_call) / base, 3),
        }
        for name, p in PRESETS.items()
    ]


def measure(out: Path, cache: Path, log=print) -> list[dict]:
    """Render the demo with every preset on one tiny-model session; time and compare each."""
    from ..assemble import load_torch_session
    from ..demo import DEMO_SIZE, demo_model, demo_video
    from ..engines.spec import SPEED_ENGINES
    from ..runtime.pipeline import RunConfig
    from ..runtime.sampler import PRESETS

    session = load_torch_session(
        demo_model(cache), "cpu", False, DEMO_SIZE, 16, steps=SPEED_ENGINES
    )
    rows = {r["preset"]: r for r in costs()}
    videos = {}
    with session:
        for name, p in PRESETS.items():
            cfg = RunConfig(size=DEMO_SIZE, **p.fields())
            videos[name] = out / f"{name}.mp4"
            start = time.perf_counter()
            demo_video(session, videos[name], cfg)
            rows[name]["seconds"] = round(time.perf_counter() - start, 2)
            log(f"{name}: {rows[name]['seconds']} s")
    base = rows["faithful"]["seconds"]
    for name, row in rows.items():
        row["speedup"] = round(base / row["seconds"], 2)
        c = compare_videos(videos["faithful"], videos[name])
        row.update(
            frames=c.compared,
            psnr_mean=round(c.psnr.mean, 2),
            psnr_min=round(c.psnr.min, 2),
            ssim_mean=round(c.ssim.mean, 4),
        )
    return list(rows.values())


def measure_full_size(size: int = 64, log=print) -> list[dict]:
    """One 16-frame clip per preset on the released architecture (seeded random weights built
    in memory, fp32, CPU) at ``size`` px: seconds per clip from ``generate`` (the per-video
    work, the clip's steps, the decode and the frames to the host; no audio model, no encoding:
    random audio features), after one untimed faithful 1-step clip (first-call costs)."""
    from ..assemble import session_from_pretrained
    from ..engines.spec import SPEED_ENGINES, run_engines
    from ..export.checkpoints import GENERATION_COMPONENTS
    from ..export.graphs import GraphShapes
    from ..random_weights import random_pretrained
    from ..runtime.pipeline import RunConfig, generate
    from ..runtime.sampler import PRESETS
    from .bench import _features, _portrait

    log("building the full-size model with random weights in memory ...")
    pre = random_pretrained("full", components=GENERATION_COMPONENTS)
    names = run_engines(steps=SPEED_ENGINES)
    session = session_from_pretrained(pre, GraphShapes(size=size, frames=16), "cpu", False, names)
    rows = {r["preset"]: r for r in costs()}
    with session, torch.inference_mode():
        portrait = _portrait(size, session.embedding_dim)
        feats = _features(session, 16)
        for _ in generate(session, portrait, feats, RunConfig(steps=1, size=size)):
            pass
        for name, p in PRESETS.items():
            cfg = RunConfig(size=size, **p.fields())
            start = time.perf_counter()
            for _ in generate(session, portrait, feats, cfg):
                pass
            rows[name]["seconds_per_clip"] = round(time.perf_counter() - start, 2)
            log(f"{name}: {rows[name]['seconds_per_clip']} s per clip")
    base = rows["faithful"]["seconds_per_clip"]
    for row in rows.values():
        row["speedup"] = round(base / row["seconds_per_clip"], 2)
        row["size"] = size
    return list(rows.values())


def markdown(rows: list[dict]) -> str:
    head = (
        "| preset | sampler | steps | guided steps | cache interval | TFLOP/frame (full size) "
        "| vs faithful |"
    )
    rule = "|---|---|---|---|---|---|---|"
    measured = "seconds" in rows[0]
    full = "seconds_per_clip" in rows[0]
    if measured:
        head += " CPU s (tiny) | speed-up | PSNR vs faithful mean / min (dB) | SSIM mean |"
        rule += "---|---|---|---|"
    if full:
        head += f" CPU s per clip (full size, {rows[0]['size']} px) | speed-up |"
        rule += "---|---|"
    lines = [head, rule]
    for r in rows:
        line = (
            f"| {r['preset']} | {r['sampler']} | {r['steps']} | {r['guidance_steps']} | "
            f"{r['cache_interval']} | {r['tflop_per_frame']} | {r['vs_faithful']} |"
        )
        if measured:
            line += (
                f" {r['seconds']} | {r['speedup']}x | {r['psnr_mean']} / {r['psnr_min']} | "
                f"{r['ssim_mean']} |"
            )
        if full:
            line += f" {r['seconds_per_clip']} | {r['speedup']}x |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..demo import cache_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="keep the videos, presets.jsonl and presets.md here")
    p.add_argument("--cache", type=Path, default=cache_dir(), help="the demo model's cache")
    p.add_argument("--cost-only", action="store_true", help="only the full-size FLOP table")
    p.add_argument(
        "--full-size",
        type=int,
        metavar="PX",
        help="instead: one clip per preset on the released architecture (random weights) at PX",
    )
    args = p.parse_args(argv)
    if args.cost_only:
        print(markdown(costs()))
        return 0
    if args.full_size:
        rows = measure_full_size(
            args.full_size, log=lambda s: print(s, file=sys.stderr, flush=True)
        )
        print(markdown(rows))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "presets-full.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows)
            )
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = measure(out, args.cache, log=lambda s: print(s, file=sys.stderr, flush=True))
        report = markdown(rows)
        print(report)
        if args.out:
            (out / "presets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (out / "presets.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
