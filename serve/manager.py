"""The ingress side of the server: the jobs, their bounded queue and their results folder.

``JobManager`` runs in the ingress replica's event loop. ``submit`` checks a request (the
intake, ``serve.jobs.check_request``) and refuses it when the queue is full (429), so memory and
disk never grow without bound; each accepted job is driven by a task that streams it through a
generator replica (Ray Serve routes it to a free one) and writes the video under
``results/<id>/`` as a hidden partial file renamed when complete. A job whose replica dies is
reported failed (it is not retried: a job that kills its replica would kill the next one too),
a cancelled one stops at the generator's next step; neither leaves a file behind. Finished jobs
are forgotten, with their files, ``keep_seconds`` after they end.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..engines.errors import Hallo2rtError
from .jobs import FINAL, Job, RequestError, ServeConfig, check_request, new_job_id, remove_tree

RESULT = "video.mp4"
PARTIAL = ".video.mp4.partial"
INPUTS = ".inputs"


class JobManager:
    """``stream(spec)`` -> async iterator of a generator's events (``serve.worker.Generator.run``:
    a Ray Serve streaming handle call, or the generator itself in tests)."""

    def __init__(self, config: ServeConfig, stream: Callable[[dict], Any]):
        self.config, self.stream = config, stream
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.cancelling: set[str] = set()
        self.pending = 0  # requests being checked
        self.changed = asyncio.Condition()
        config.results.mkdir(parents=True, exist_ok=True)

    # --- bookkeeping ---------------------------------------------------------------------------

    def active(self) -> int:
        """Jobs waiting or running, and requests being checked (each holds a place)."""
        return self.pending + sum(1 for j in self.jobs.values() if j.state not in FINAL)

    def get(self, job_id: str) -> Job:
        self.sweep()
        job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(f"no job {job_id!r} (unknown, or finished and expired)", 404)
        return job

    def sweep(self) -> None:
        """Forget finished jobs older than ``keep_seconds`` and delete their files."""
        now = time.time()
        for job in list(self.jobs.values()):
            if job.finished is not None and now - job.finished > self.config.keep_seconds:
                remove_tree(self.config.results / job.id)
                del self.jobs[job.id]

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_change(self, timeout: float) -> None:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    # --- submit, drive, cancel -----------------------------------------------------------------

    async def submit(
        self,
        save_files: Callable[[Path], Awaitable[dict[str, Path]]],
        fields: dict[str, str],
        check: Callable[..., dict] = check_request,
    ) -> Job:
        """Check a request and queue it. ``save_files(folder)`` writes the uploads into
        ``folder`` and returns them by name. Raises ``RequestError`` (with its HTTP status) or
        another ``Hallo2rtError`` (the intake's message)."""
        self.sweep()
        if self.active() >= self.config.max_queue:
            raise RequestError(
                f"the queue is full ({self.active()} jobs waiting or running, the limit is "
                f"{self.config.max_queue}): try again later",
                429,
            )
        job = Job(new_job_id())
        folder = self.config.results / job.id
        inputs = folder / INPUTS
        inputs.mkdir(parents=True)
        self.pending += 1  # a place in the queue while the request is checked
        try:
            files = await save_files(inputs)
            loop = asyncio.get_running_loop()
            spec = await loop.run_in_executor(
                None, check, self.config, files, fields, folder / RESULT
            )
        except Hallo2rtError as exc:  # the message without this server's paths
            remove_tree(folder)
            message = str(exc).replace(f"{inputs}/", "").replace(str(folder), "the job's folder")
            raise RequestError(message, status_of(exc)) from None
        except BaseException:
            remove_tree(folder)
            raise
        finally:
            remove_tree(inputs)  # the job travels as bytes in spec
            self.pending -= 1
        self.jobs[job.id] = job
        self.tasks[job.id] = asyncio.create_task(self._drive(job, spec))
        return job

    async def _drive(self, job: Job, spec: dict[str, Any]) -> None:
        folder = self.config.results / job.id
        partial = folder / PARTIAL
        written = 0
        try:
            with partial.open("wb") as f:
                async for event in self.stream(spec):
                    if "chunk" in event:
                        f.write(event["chunk"])
                        written += len(event["chunk"])
                        continue
                    state = event["state"]
                    if state == "running":
                        job.state = "running"
                        for key in ("clip", "clips", "step", "steps", "fps", "eta_s"):
                            setattr(job, key, event[key])
                    elif state == "failed":
                        job.finish("failed", event["error"])
                    elif state == "done":
                        if event["bytes"] != written:
                            raise RuntimeError(f"{written} of {event['bytes']} bytes arrived")
                        f.flush()
                        os.fsync(f.fileno())
                        os.replace(partial, folder / RESULT)  # whole, or not there
                        job.result = folder / RESULT
                        job.clip, job.step, job.eta_s = job.clips, job.steps, 0.0
                        job.finish("done")
                    await self._notify()
            if job.state not in FINAL:
                raise RuntimeError("the generator stopped without a result")
        except asyncio.CancelledError:
            job.finish("cancelled")
        except Exception as exc:  # a dead replica, a lost connection: reported, not retried
            if job.id in self.cancelling:  # Ray's own error for a request we cancelled
                job.finish("cancelled")
                return
            job.finish(
                "failed",
                f"the generator replica stopped before the video was finished ({type(exc).__name__}"
                f": {str(exc)[:300]}); nothing was kept: submit the job again",
            )
        finally:
            partial.unlink(missing_ok=True)
            if job.state != "done":
                remove_tree(folder)
            self.tasks.pop(job.id, None)
            self.cancelling.discard(job.id)
            await self._notify()

    async def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job (its files go); a finished job's files are deleted."""
        job = self.get(job_id)
        task = self.tasks.get(job_id)
        if task is not None:
            self.cancelling.add(job_id)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        elif job.state == "done":
            remove_tree(self.config.results / job.id)
            job.result = None
            job.finish("cancelled", "deleted after it finished")
            await self._notify()
        return job

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def status_of(exc: BaseException) -> int:
    """The HTTP status of a refused request: its own, 400 for options, 422 for unusable input."""
    if isinstance(exc, RequestError):
        return exc.status
    from ..engines.errors import OptionError

    return 400 if isinstance(exc, OptionError) else 422 if isinstance(exc, Hallo2rtError) else 500
