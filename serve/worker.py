"""The generator: one ``Session`` opened once (engines loaded and warm; a CUDA graph captured
by the first job and replayed by the next), one job at a time; and the upscaler (``--upscale``),
whose replicas restore and upscale the clips of the jobs that ask for it while the generators go
on to the next clips. Plain Python: the Ray Serve deployments in ``serve.app`` wrap them, and
tests may drive them directly.

A job arrives as bytes (the portrait, the audio) and options already checked by the intake
(``serve.jobs.check_request``); its video is written in a private temporary folder of this
machine and streamed back in chunks, so replicas on other machines need no shared storage.
``run`` is an async generator of events: progress after every denoiser step, then the video's
chunks, then ``done``. Closing it (a cancelled request, the client gone) sets a flag that the
next step's progress callback turns into ``JobCancelled``: the pipeline stops, removes its
partial file, and the temporary folder goes with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..engines.errors import Hallo2rtError
from ..runtime.sr_remote import WindowRestorer
from .jobs import ServeConfig

CHUNK = 4 << 20  # bytes of video per streamed event
TEMP_PREFIX = "hallo2rt-job-"


class JobCancelled(Hallo2rtError, RuntimeError):
    """The job was cancelled (or its client went away) mid-run."""


def _sweep_stale(root: Path, older_than: float = 3600.0) -> None:
    """Temporary job folders a killed replica left behind (never a result: those live with
    the ingress)."""
    now = time.time()
    for path in root.glob(TEMP_PREFIX + "*"):
        try:
            if now - path.stat().st_mtime > older_than:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _open_session(config: ServeConfig, **engines):
    """The replica's session, opened once (every job of the replica reuses it); ``engines``:
    which engines (``assemble.open_session``'s generation, upscale, steps)."""
    from ..assemble import open_session

    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    session = open_session(
        engines=config.engines,
        checkpoints=config.checkpoints,
        device=config.device,
        dtype=config.dtype,
        size=config.size if config.checkpoints is not None else None,
        **engines,
    )
    session.__enter__()
    return session


class Upscaler(WindowRestorer):
    """The SR deployment's replica (``--upscale``): the four super-resolution engines opened
    once; restores any job's windows, one call a window, keeping nothing between calls
    (``runtime.sr_remote.WindowRestorer``: each call carries the state the previous window
    handed on)."""

    def __init__(self, config: ServeConfig):
        super().__init__(_open_session(config, generation=False, upscale=True))


class _RemoteRestorer:
    """``WindowRestorer``'s two calls through a Ray Serve handle to the Upscaler deployment.
    Blocking: only the generation's thread and its SR thread call them, never the event loop.
    A call that failed with one of our errors raises that error (its message, not Ray's
    traceback)."""

    def __init__(self, handle):
        self.handle = handle

    @staticmethod
    def _result(response):
        try:
            return response.result()
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Hallo2rtError):
                raise cause from None
            raise

    def geometry(self, *args):
        return self._result(self.handle.geometry.remote(*args))

    def window(self, *args):
        return self._result(self.handle.window.remote(*args))


class Generator:
    """``Generator(config[, upscaler])`` opens the session; ``run(spec)`` generates one job.
    ``upscaler``: a handle to the Upscaler deployment, which restores and upscales the clips of
    jobs that ask for it while this replica makes the next clips."""

    def __init__(self, config: ServeConfig, upscaler=None):
        from ..engines.spec import SPEED_ENGINES

        _sweep_stale(Path(tempfile.gettempdir()))
        steps: tuple[str, ...] = SPEED_ENGINES
        if config.engines is not None:  # the step engines this folder has
            steps = tuple(n for n in SPEED_ENGINES if (config.engines / n).is_dir())
        self.config = config
        self.session = _open_session(config, steps=steps)
        self.restorer = None if upscaler is None else _RemoteRestorer(upscaler)
        self._busy = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"engines": self.session.describe(), "size": self.session.size}

    def _generate(self, spec: dict[str, Any], folder: Path, emit, cancelled: threading.Event):
        from ..runtime.pipeline import generate_video

        image = folder / ("portrait" + spec["image"][0])
        audio = folder / ("audio" + spec["audio"][0])
        image.write_bytes(spec["image"][1])
        audio.write_bytes(spec["audio"][1])
        out = folder / "video.mp4"
        cfg = dataclasses.replace(spec["cfg"], size=self.session.size, frames=self.session.frames)

        def progress(p) -> None:
            if cancelled.is_set():
                raise JobCancelled("cancelled")
            emit(
                {
                    "state": "running",
                    "clip": p.clip,
                    "clips": p.clips,
                    "step": p.steps_done,
                    "steps": p.steps_total,
                    "fps": p.fps,
                    "eta_s": None if p.steps_done == 0 else p.eta,
                }
            )

        with self._busy:  # one job at a time per replica, whatever the router does
            generate_video(
                self.session,
                image,
                audio,
                out,
                spec["face_box"],
                spec["embedding"],
                cfg,
                lip_box=spec["lip_box"],
                progress=progress,
                restorer=self.restorer,
            )
        return out

    async def run(self, spec: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Events of one job: {"state": "running", ...progress}, {"chunk": bytes} x n, then
        {"state": "done", "bytes": n}; or {"state": "failed", "error": message}."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        task = loop.run_in_executor(None, self._generate, spec, folder, emit, cancelled)
        try:
            while not task.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
            try:
                out = task.result()
            except Hallo2rtError as exc:  # a clear message for the client
                yield {"state": "failed", "error": str(exc)}
                return
            except Exception as exc:  # reported, not hidden
                yield {"state": "failed", "error": f"unexpected error: {type(exc).__name__}: {exc}"}
                return
            size = out.stat().st_size
            with out.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield {"chunk": chunk}
            yield {"state": "done", "bytes": size}
        finally:
            cancelled.set()  # closed early (cancel, client gone): stop at the next step
            # the folder goes when the pipeline has stopped (it removes its partial file first)
            task.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
