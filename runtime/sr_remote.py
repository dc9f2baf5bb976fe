"""Super-resolution on another worker, pipelined with generation (``hallo2rt serve --upscale``).

A server that upscales runs face restoration and upscaling on replicas of their own (other
GPUs), so that the generator denoises clip k+1 while clip k is restored. What one SR window
hands the next is small (the shared frames' encoder features, the last landmarks, two
counters: ``SuperResolver.state``), so the restoring side keeps nothing between calls: each call
carries one window's frames and the state, and returns the upscaled frames and the new state.
Any SR replica may take any window of any job, and no routing has to stick.

- ``WindowRestorer(session)``: the restoring side, over a session with the SR engines
  (``serve.worker.Upscaler`` is this behind a Ray Serve deployment).
- ``PipelinedSuperResolver(restorer, ...)``: the generating side, with ``SuperResolver``'s
  ``push``/``flush``. It cuts the same windows and hands them to ``restorer`` (anything with
  ``WindowRestorer``'s two methods) on a thread of its own, at most ``depth`` windows ahead of
  the frames the caller has taken back, so memory stays bounded when restoring is slower.

The frames are ``SuperResolver``'s, bit for bit: the same windows, the same state, the same
engines (tests/runtime/test_sr.py).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from .sr import SRWindows, SuperResolver

Setup = tuple[int, int, int, float]  # height, width, scale, fidelity


class WindowRestorer:
    """Restores SR windows for any number of jobs; holds only the session."""

    def __init__(self, session):
        self.session = session

    def geometry(self, height: int, width: int, scale: int, fidelity: float) -> tuple[int, int]:
        """(window, overlap) of these engines, after the checks a ``SuperResolver`` makes
        (scale, fidelity, frame size against the engines): its errors, before any work."""
        sr = SuperResolver(self.session, height, width, scale, fidelity)
        return sr.window, sr.overlap

    def window(
        self, setup: Setup, frames: np.ndarray, state: dict | None
    ) -> tuple[np.ndarray, dict]:
        """One window: frames (n, 3, H, W) float32 in [0, 1] and the previous window's state
        (None for the first) -> (n, sH, sW, 3) uint8 frames and this window's state."""
        sr = SuperResolver(self.session, *setup)
        if state is not None:
            sr.load_state(state)
        out = sr.run_window(torch.tensor(frames, device=sr.device))
        return out.cpu().numpy(), sr.state()


class PipelinedSuperResolver(SRWindows):
    """``SuperResolver``'s ``push``/``flush`` with every window restored by ``restorer`` on a
    thread of its own: ``push`` hands over the windows its frames complete and yields the
    upscaled frames that are back by then (it waits only when ``depth`` windows are out);
    ``flush`` sends the last window and yields the rest, in order. ``close`` stops the thread
    (after an error or a cancel; ``flush`` closes it too)."""

    def __init__(
        self,
        restorer,
        height: int,
        width: int,
        scale: int = 4,
        fidelity: float = 0.5,
        depth: int = 2,
    ):
        window, overlap = restorer.geometry(height, width, scale, fidelity)
        super().__init__(height, width, window, overlap)
        self.restorer, self.scale, self.fidelity = restorer, scale, fidelity
        self._setup: Setup = (height, width, scale, fidelity)
        self._todo: queue.Queue = queue.Queue(maxsize=depth)
        self._done: queue.Queue = queue.Queue()
        self._sent = self._taken = 0
        self._state: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="hallo2rt-sr", daemon=True)
        self._thread.start()

    @property
    def frames_out(self) -> int:
        return 0 if self._state is None else int(self._state["frames_out"])

    @property
    def frames_without_face(self) -> int:
        return 0 if self._state is None else int(self._state["frames_without_face"])

    def _work(self) -> None:
        while True:
            frames = self._todo.get()
            if frames is None or self._stop.is_set():
                return
            try:
                out, self._state = self.restorer.window(self._setup, frames, self._state)
            except BaseException as exc:  # handed to the caller at its next push or flush
                self._done.put(exc)
                return
            self._done.put(out)

    def _send(self, frames: torch.Tensor) -> None:
        array = frames.cpu().numpy()
        while True:
            if not self._thread.is_alive():
                self._fail()
            try:
                self._todo.put(array, timeout=0.2)
                break
            except queue.Full:
                continue
        self._sent += 1

    def _fail(self) -> None:
        """The thread has stopped before its windows were done: raise its error."""
        while True:
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                raise RuntimeError("super-resolution was stopped (closed)") from None
            if isinstance(item, BaseException):
                raise item

    def _take(self, block: bool) -> Iterator[torch.Tensor]:
        while self._taken < self._sent:
            try:
                item = self._done.get(timeout=0.2) if block else self._done.get_nowait()
            except queue.Empty:
                if not block:
                    return
                if not self._thread.is_alive() and self._done.empty():
                    self._fail()
                continue
            if isinstance(item, BaseException):
                self.close()
                raise item
            self._taken += 1
            yield torch.from_numpy(np.array(item))

    def push(self, pixels: torch.Tensor) -> Iterator[torch.Tensor]:
        for batch in self._cut(pixels, pixels.device):
            self._send(batch)
            yield from self._take(block=False)

    def flush(self) -> Iterator[torch.Tensor]:
        batch = self._rest()
        if batch is not None:
            self._send(batch)
        yield from self._take(block=True)
        self.close()

    def close(self) -> None:
        self._stop.set()
        try:
            self._todo.put_nowait(None)
        except queue.Full:  # the thread sees the stop flag after its current window
            pass
