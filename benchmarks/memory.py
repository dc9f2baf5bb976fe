"""Peak memory of a generation against the audio's length (issue: flat memory for long audio).

    python -m hallo2rt.benchmarks.memory --seconds 10 60 [--engines DIR] [--steps 2] [--upscale 4]

Each length runs in a fresh process (so one peak does not hide another): the tiny random model
of ``hallo2rt demo`` (or built engines with ``--engines``), the bundled portrait, a synthetic
tone of the given length, written to an MP4 with the audio. The child reports its peak RSS
(``getrusage``, the whole process: Python, torch, ONNX Runtime, PyAV) and wall time; the parent
prints a table and, with ``--json``, writes the numbers. It measures memory, not speed: the tiny
model at 64 px makes even a long video quick.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _write_tone(path: Path, seconds: float, rate: int = 44100) -> None:
    """A stereo tone, written in blocks (the benchmark must not hold the audio itself)."""
    import av
    import numpy as np

    block = rate  # one second at a time
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="stereo")
        for start in range(0, int(seconds * rate), block):
            n = min(block, int(seconds * rate) - start)
            t = (start + np.arange(n)) / rate
            wave = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)])
            data = (wave * 32767).astype(np.int16).T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def child(seconds: float, engines: str | None, steps: int, workdir: Path, upscale: int = 1) -> dict:
    """One generation in this process; returns its numbers."""
    import numpy as np

    from hallo2rt.assemble import load_torch_session
    from hallo2rt.demo import ASSETS, DEMO_FACE_BOX, DEMO_LIP_BOX, cache_dir, demo_model
    from hallo2rt.engines.spec import run_engines
    from hallo2rt.runtime.pipeline import RunConfig, generate_video
    from hallo2rt.runtime.portrait import parse_box
    from hallo2rt.runtime.session import Session

    audio = workdir / f"tone-{seconds:g}s.wav"
    _write_tone(audio, seconds)
    if engines:
        session = Session.open(engines, names=run_engines(upscale=upscale > 1))
    else:
        session = load_torch_session(demo_model(cache_dir()), "cpu", size=64, upscale=upscale > 1)
    start = time.perf_counter()
    with session:
        out = generate_video(
            session,
            ASSETS / "portrait.jpg",
            audio,
            workdir / f"out-{seconds:g}s.mp4",
            parse_box(DEMO_FACE_BOX),
            np.random.default_rng(0).standard_normal(session.embedding_dim),
            RunConfig(steps=steps, frames=session.frames, size=session.size, upscale=upscale),
            lip_box=parse_box(DEMO_LIP_BOX),
        )
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "seconds": seconds,
        "frames": int(np.ceil(seconds * 25)),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "generate_seconds": round(wall, 1),
        "output_mb": round(out.stat().st_size / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[10, 60])
    p.add_argument("--engines", help="built engines (default: the demo's tiny torch model)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--upscale", type=int, choices=(1, 2, 4), default=1, help="through SR too")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--child", type=float, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.engines, args.steps, args.workdir, args.upscale)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            cmd = [
                sys.executable,
                "-m",
                "hallo2rt.benchmarks.memory",
                "--child",
                str(seconds),
                "--steps",
                str(args.steps),
                "--workdir",
                tmp,
                "--upscale",
                str(args.upscale),
            ]
            cmd += ["--engines", args.engines] if args.engines else []
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_rss_mb"]
    print(
        f"model: {args.engines or 'demo tiny torch model, 64 px'}; steps {args.steps}; "
        f"upscale x{args.upscale}; "
        f"{platform.machine()}, Python {platform.python_version()}"
    )
    print(f"{'audio s':>8} {'frames':>7} {'peak RSS MB':>12} {'vs first':>9} {'generate s':>11}")
    for r in rows:
        print(
            f"{r['seconds']:8g} {r['frames']:7d} {r['peak_rss_mb']:12.1f} "
            f"{(r['peak_rss_mb'] / base - 1) * 100:+8.1f}% {r['generate_seconds']:11.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
