"""Speed presets: their cost (TFLOP per generated frame at full size) and, on a model at hand,
their speed and deviation from the faithful output, measured in one run.

    python -m hallo2rt.benchmarks.presets --out benchmarks/results/presets   # tiny demo model

Cost: the denoiser's per-step cost and the per-clip costs were counted on the real full-size
graphs (docs/model.md §5, 512 px, 16 frames, both CFG halves); a preset's cost per frame is its
steps times the per-step cost plus the per-clip work, over 16 frames. The multistep sampler's
extra element-wise ops (three on the 1x4x16x64x64 latents per step) are below 1e-5 TFLOP.

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

# docs/model.md §5 (TFLOP, full size: 512 px, 16-frame clips)
DENOISER_STEP = 53.95 - 5.15 - 0.41 - 0.08  # one step, both CFG halves, after the §6 savings
PER_CLIP = 40.23 + 4.78 + 3.35 + 0.139 + 0.0069 + 0.0012  # VAE decode/encode, ReferenceNet, ...
FRAMES = 16


def tflop_per_frame(steps: int) -> float:
    """Full-size TFLOP per generated frame of a run with ``steps`` denoising steps."""
    return (steps * DENOISER_STEP + PER_CLIP) / FRAMES


def costs() -> list[dict]:
    from ..runtime.sampler import PRESETS

    base = tflop_per_frame(PRESETS["faithful"][1])
    return [
        {
            "preset": name,
            "sampler": sampler,
            "steps": steps,
            "tflop_per_frame": round(tflop_per_frame(steps), 2),
            "vs_faithful": round(tflop_per_frame(steps) / base, 3),
        }
        for name, (sampler, steps) in PRESETS.items()
    ]


def measure(out: Path, cache: Path, log=print) -> list[dict]:
    """Render the demo with every preset on one tiny-model session; time and compare each."""
    from ..assemble import load_torch_session
    from ..demo import DEMO_SIZE, demo_model, demo_video
    from ..runtime.pipeline import RunConfig
    from ..runtime.sampler import PRESETS
    from .compare import compare_videos

    session = load_torch_session(demo_model(cache), "cpu", False, DEMO_SIZE, 16)
    rows = {r["preset"]: r for r in costs()}
    videos = {}
    with session:
        for name, (sampler, steps) in PRESETS.items():
            cfg = RunConfig(size=DEMO_SIZE, sampler=sampler, steps=steps)
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


def markdown(rows: list[dict]) -> str:
    head = "| preset | sampler | steps | TFLOP/frame (full size) | vs faithful |"
    rule = "|---|---|---|---|---|"
    measured = "seconds" in rows[0]
    if measured:
        head += " CPU s (tiny) | speed-up | PSNR vs faithful mean / min (dB) | SSIM mean |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    for r in rows:
        line = (
            f"| {r['preset']} | {r['sampler']} | {r['steps']} | {r['tflop_per_frame']} | "
            f"{r['vs_faithful']} |"
        )
        if measured:
            line += (
                f" {r['seconds']} | {r['speedup']}x | {r['psnr_mean']} / {r['psnr_min']} | "
                f"{r['ssim_mean']} |"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..demo import cache_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="keep the videos, presets.jsonl and presets.md here")
    p.add_argument("--cache", type=Path, default=cache_dir(), help="the demo model's cache")
    p.add_argument("--cost-only", action="store_true", help="only the full-size FLOP table")
    args = p.parse_args(argv)
    if args.cost_only:
        print(markdown(costs()))
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
