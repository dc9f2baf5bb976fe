"""Jobs of the server: its settings, the intake that checks a request before it is queued, and
the record of a job (state, progress, result), all plain Python (no Ray).

The intake runs ``hallo2rt generate``'s own checks (``cli.prepare_generate``) on the uploaded
files and the form fields, so a bad request gets the same message as the command line, before
any GPU time is spent. Form fields are the generate options with underscores (``face_box``,
``steps``, ``cfg``, ...); options that belong to the server (engines, device, output) are not
taken from requests.
"""

from __future__ import annotations

import argparse
import math
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ..engines.errors import Hallo2rtError, OptionError

# form field -> its type; every other field is refused with the list
FIELDS: dict[str, type] = {
    "face_box": str,
    "lip_box": str,
    "preset": str,
    "sampler": str,
    "steps": int,
    "guidance_steps": int,
    "cache_interval": int,
    "cfg": float,
    "seed": int,
    "pose_weight": float,
    "face_weight": float,
    "lip_weight": float,
    "face_expand_ratio": float,
    "upscale": int,  # 2 or 4: only on a server started with --upscale
    "fidelity": float,
}
FILES = ("image", "audio", "face_embedding")
FINAL = ("done", "failed", "cancelled")


class RequestError(Hallo2rtError, ValueError):
    """A request the server refuses: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServeConfig:
    """What ``hallo2rt serve`` was started with (every replica gets a copy)."""

    engines: Path | None = None  # built engines (hallo2rt build), or
    checkpoints: Path | None = None  # the official pretrained_models/ (PyTorch modules)
    results: Path = Path("hallo2rt-results")  # finished videos, one folder per job
    replicas: int = 1  # generator replicas (one GPU each where there are GPUs)
    max_replicas: int | None = None  # autoscaling: up to this many while jobs wait (None: fixed)
    device: str | None = None  # None: the engines' own, or the CPU for checkpoints
    dtype: str = "fp32"  # checkpoints only
    size: int = 512  # checkpoints only: the generated side
    keep_seconds: float = 24 * 3600  # finished jobs (and their videos) are kept this long
    max_queue: int = 16  # jobs waiting or running at once; more are answered 429
    max_upload_mb: float = 50.0  # per uploaded file
    max_audio_seconds: float = 600.0
    token: str | None = None  # bearer token every /v1 request must carry (None: none)
    threads: int | None = None  # torch / ORT threads per generator (and SR) replica
    upscale: bool = False  # an SR deployment takes requests' upscale 2 / 4 (--upscale)
    sr_replicas: int = 1  # its replicas (one GPU each where there are GPUs)

    @property
    def all_replicas(self) -> int:
        """Generator and Upscaler replicas: how many ask for a GPU (or a share of one)."""
        return self.replicas + (self.sr_replicas if self.upscale else 0)

    def __post_init__(self) -> None:
        if (self.engines is None) == (self.checkpoints is None):
            raise OptionError("give --engines (built engines) or --checkpoints (PyTorch), one")
        for name in ("replicas", "max_queue", "sr_replicas"):
            if getattr(self, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise OptionError(
                f"--max-replicas {self.max_replicas}: must be at least --replicas "
                f"({self.replicas}), the number autoscaling starts from and keeps"
            )
        for name in ("keep_seconds", "max_upload_mb", "max_audio_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise OptionError(f"{name} {value}: must be a positive number")
        if self.upscale and self.engines is not None:
            from ..engines.spec import SUPER_RESOLUTION

            missing = [n for n in SUPER_RESOLUTION if not (self.engines / n).is_dir()]
            if missing:
                raise OptionError(
                    f"--upscale needs the super-resolution engines; {self.engines} lacks "
                    f"{', '.join(missing)}: export and build them (a full export has them), or "
                    "serve without --upscale"
                )


def new_job_id() -> str:
    return secrets.token_hex(8)


def generate_argv(config: ServeConfig, inputs: dict[str, Path], fields: dict[str, str], out: Path):
    """The ``hallo2rt generate`` command line a request stands for (its options checked)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RequestError(
            f"unknown form fields {unknown}; the options are: {', '.join(FIELDS)} (and the files "
            f"{', '.join(FILES)})"
        )
    argv = ["generate", "--image", str(inputs["image"]), "--audio", str(inputs["audio"])]
    argv += ["--out", str(out), "--quiet"]
    if config.engines is not None:
        argv += ["--engines", str(config.engines)]
    else:
        argv += ["--checkpoints", str(config.checkpoints), "--size", str(config.size)]
    if "face_embedding" in inputs:
        argv += ["--face-embedding", str(inputs["face_embedding"])]
    for name, raw in fields.items():
        value = raw.strip()
        kind = FIELDS[name]
        try:
            kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise RequestError(f"{name} = {raw!r}: must be {what}") from None
        argv += [f"--{name.replace('_', '-')}", value]
    return argv


class _RequestParser(argparse.ArgumentParser):
    """generate's parser for a request's options: what it refuses (a value not among an
    option's choices) is a RequestError naming the form field, where argparse would print the
    usage and exit the server's process."""

    def error(self, message: str) -> NoReturn:
        raise RequestError(
            re.sub(r"argument --([a-z-]+):", lambda m: m.group(1).replace("-", "_") + ":", message)
        )


def check_request(
    config: ServeConfig, inputs: dict[str, Path], fields: dict[str, str], out: Path
) -> dict[str, Any]:
    """Everything ``generate`` checks before it loads weights, on the uploaded files: the
    options, the image, the audio (and its length), the face (found now when no face box or
    embedding is given). Returns the job's spec for a generator replica (no paths of this
    machine: the files travel as bytes)."""
    from ..cli import prepare_generate
    from ..engines.spec import SPEED_ENGINES
    from ..options import build_parser
    from ..runtime.audio import load_audio
    from ..runtime.portrait import load_image

    for name in ("image", "audio"):
        if name not in inputs:
            raise RequestError(f"the request has no {name} file: send it as the form file {name!r}")
    argv = generate_argv(config, inputs, fields, out)
    args = build_parser(_RequestParser).parse_args(argv)
    job = prepare_generate(args)
    load_image(inputs["image"])  # unreadable or not an image: the loader's message
    wave, rate = load_audio(inputs["audio"])
    seconds = wave.shape[-1] / rate
    if seconds > config.max_audio_seconds:
        raise RequestError(
            f"the audio is {seconds:.0f} s long; this server takes at most "
            f"{config.max_audio_seconds:.0f} s: cut it or ask for a longer limit",
            413,
        )
    if job.cfg.upscale > 1 and not config.upscale:
        raise RequestError(
            f"upscale = {job.cfg.upscale}: this server does not upscale (it was started without "
            "--upscale): send upscale = 1, or ask the operator to start it with --upscale"
        )
    plan = job.cfg.sampling.plan()
    if config.engines is not None:
        missing = [n for n in dict.fromkeys(plan) if n in SPEED_ENGINES]
        missing = [n for n in missing if not (config.engines / n).is_dir()]
        if missing:
            raise RequestError(
                f"this server's engines lack {', '.join(missing)}, which these options call; "
                "use preset = faithful or ask the operator to export and build them"
            )
    return {
        "cfg": job.cfg,
        "face_box": job.face_box,
        "lip_box": job.lip_box,
        "embedding": job.embedding,
        "image": (inputs["image"].suffix, inputs["image"].read_bytes()),
        "audio": (inputs["audio"].suffix, inputs["audio"].read_bytes()),
    }


@dataclass
class Job:
    """One request's record, as ``GET /v1/videos/{id}`` shows it."""

    id: str
    state: str = "queued"  # queued, running, done, failed, cancelled
    clip: int = 0  # clips finished
    clips: int = 0
    step: int = 0  # denoiser steps finished over the whole video
    steps: int = 0
    fps: float = 0.0
    eta_s: float | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    result: Path | None = None

    def public(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "state": self.state,
            "clip": self.clip,
            "clips": self.clips,
            "step": self.step,
            "steps": self.steps,
            "fps": round(self.fps, 3),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
        }
        if self.state == "done":
            out["result"] = f"/v1/videos/{self.id}/result"
        return out

    def finish(self, state: str, error: str | None = None) -> None:
        self.state, self.error, self.finished = state, error, time.time()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
