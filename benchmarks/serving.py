"""What serving costs on top of generation: time to first clip and frames/s of jobs sent to
``hallo2rt serve`` over HTTP (a local Ray cluster, warm replicas), beside the same jobs made in
this process by ``generate_video`` on a session opened beforehand.

    python -m hallo2rt.benchmarks.serving --checkpoints ~/.cache/hallo2rt/demo-tiny-v3 --size 64 \\
        --image hallo2rt/assets/portrait.jpg --audio speech.wav --face-embedding emb.npy \\
        --face-box 180,78,262,182 --steps 8 [--upscale 2] [--jobs 2] [--out PREFIX]

Each side runs ``--jobs`` jobs one after another (the first on a fresh replica or session: on a
GPU it captures the CUDA graph, so it is reported apart from the warm ones). Timers:
- served: from the POST (the upload and the intake's checks included) to the first state whose
  ``clip`` is >= 1 ("time to first clip": the first clip denoised), and to ``done`` (the whole
  video written into the server's results folder); frames/s = the video's frames / that time.
  The client follows the job's server-sent events, so each time is when the client heard it.
- in process: from the ``generate_video`` call to the first progress with ``clip`` >= 1, and to
  its return (the MP4 written).
The server is stopped before the in-process runs start, so the two never share the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# generate's options a job may carry, as this benchmark passes them on
OPTIONS = ("face_box", "steps", "preset", "seed", "upscale", "fidelity")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _video_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _record(side: str, job: int, first_clip: float | None, total: float, frames: int) -> dict:
    return {
        "side": side,
        "job": job,
        "warm": job > 0,
        "first_clip_s": None if first_clip is None else round(first_clip, 3),
        "total_s": round(total, 3),
        "frames": frames,
        "fps": round(frames / total, 3),
    }


def served(args: argparse.Namespace, config, options: dict[str, Any], out: Path, log) -> list[dict]:
    """``--jobs`` jobs through a server (``config``) on a local Ray cluster, over HTTP."""
    import ray
    from ray import serve

    from ..serve.app import run_server
    from ..serve.client import Client

    port = _free_port()
    started = time.perf_counter()
    run_server(config, port=port, page=False, block=False, log=log)
    log(f"server up in {time.perf_counter() - started:.1f} s")
    client = Client(f"http://127.0.0.1:{port}")
    rows = []
    try:
        for i in range(args.jobs):
            start = time.perf_counter()
            job = client.submit(args.image, args.audio, args.face_embedding, **options)
            first = None
            for state in client.events(job):
                if first is None and state.get("clip", 0) >= 1:
                    first = time.perf_counter() - start
                if state["state"] in ("done", "failed", "cancelled"):
                    break
            total = time.perf_counter() - start
            state = client.status(job)
            if state["state"] != "done":
                raise RuntimeError(f"served job {i} {state['state']}: {state.get('error')}")
            video = client.download(job, out / f"served-{i}.mp4")
            rows.append(_record("served", i, first, total, _video_frames(video)))
            log(json.dumps(rows[-1]))
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def in_process(
    args: argparse.Namespace, config, options: dict[str, Any], out: Path, log
) -> list[dict]:
    """The same jobs by ``generate_video`` on one session opened before the timers, with the
    options the server's intake (``serve.jobs.check_request``) makes of the same request."""
    from ..assemble import open_session
    from ..runtime.pipeline import generate_video
    from ..serve.jobs import check_request

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    inputs = {"image": args.image, "audio": args.audio}
    if args.face_embedding:
        inputs["face_embedding"] = args.face_embedding
    fields = {k: str(v) for k, v in options.items()}
    job = check_request(config, inputs, fields, out / "in-process.mp4")
    session = open_session(
        engines=args.engines,
        checkpoints=args.checkpoints,
        device=args.device,
        size=args.size if args.checkpoints else None,
        upscale=job["cfg"].upscale > 1,
        steps=job["cfg"].sampling.plan(),
    )
    with session:
        import dataclasses

        cfg = dataclasses.replace(job["cfg"], size=session.size, frames=session.frames)
        for i in range(args.jobs):
            video = out / f"in-process-{i}.mp4"
            first: list[float] = []
            start = time.perf_counter()

            def progress(p, start=start, first=first) -> None:
                if not first and p.clip >= 1:
                    first.append(time.perf_counter() - start)

            generate_video(
                session,
                args.image,
                args.audio,
                video,
                job["face_box"],
                job["embedding"],
                cfg,
                lip_box=job["lip_box"],
                progress=progress,
            )
            total = time.perf_counter() - start
            rows.append(
                _record("in process", i, first[0] if first else None, total, _video_frames(video))
            )
            log(json.dumps(rows[-1]))
    return rows


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "source": str(args.engines or args.checkpoints),
        "size": args.size,
        "audio": str(args.audio),
    }


def markdown(rows: list[dict], env: dict[str, Any], options: dict[str, Any]) -> str:
    lines = [
        f"Serving vs in process — {env['gpu'] or 'CPU'} ({env['cpus']} CPUs), torch "
        f"{env['torch']}, Ray {env['ray']}; {env['source']}, options {options}",
        "",
        "| side | job | warm | time to first clip (s) | total (s) | frames | frames/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['side']} | {r['job']} | {'yes' if r['warm'] else 'no'} | {r['first_clip_s']} | "
            f"{r['total_s']} | {r['frames']} | {r['fps']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engines", type=Path, help="engines built by `hallo2rt build`")
    src.add_argument("--checkpoints", type=Path, help="the official pretrained_models/ (PyTorch)")
    p.add_argument("--size", type=int, default=512, help="--checkpoints only: the generated side")
    p.add_argument("--device", help="cpu or cuda (default: the engines' own, or the CPU)")
    p.add_argument("--threads", type=int, help="torch threads (both sides)")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--audio", type=Path, required=True)
    p.add_argument("--face-embedding", type=Path)
    p.add_argument("--face-box")
    p.add_argument("--steps", type=int)
    p.add_argument("--preset")
    p.add_argument("--seed", type=int)
    p.add_argument("--upscale", type=int)
    p.add_argument("--fidelity", type=float)
    p.add_argument("--jobs", type=int, default=2, help="jobs per side, one after another")
    p.add_argument("--out", type=Path, help="write PREFIX.jsonl and PREFIX.md")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    options = {n: getattr(args, n) for n in OPTIONS if getattr(args, n) is not None}

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    from ..serve.jobs import ServeConfig

    with tempfile.TemporaryDirectory() as tmp:
        config = ServeConfig(
            engines=args.engines,
            checkpoints=args.checkpoints,
            size=args.size,
            device=args.device,
            results=Path(tmp) / "served",
            threads=args.threads,
            upscale=options.get("upscale", 1) > 1,
        )
        rows = served(args, config, options, Path(tmp), log)
        rows += in_process(args, config, options, Path(tmp), log)
    env = environment(args)
    report = markdown(rows, env, options)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        records = [{"kind": "environment", **env, "options": options}, *rows]
        Path(f"{args.out}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        Path(f"{args.out}.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
