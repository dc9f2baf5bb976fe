"""Streamed MP4 output: H.264 video with the driving audio muxed as AAC (PyAV).

Frames are encoded as they arrive and the audio is muxed up to the current video time after each
batch, so memory does not grow with the video's length (the muxer interleaves as it goes). The
file is written under a temporary name of its own beside the target and renamed only when
complete: an error, Ctrl-C or a full disk leaves no broken output (and an older file at the
target untouched), and two runs writing the same target never mix: each writes its own file and
the last to finish replaces the other's whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .media import MediaError

log = logging.getLogger(__name__)

AUDIO_CHUNK = 1024  # AAC frame size


def _own_partial(path: Path) -> Path:
    """A new, empty ``.<name>.<random>.partial`` beside ``path``, created exclusively (no other
    run has it) with the umask's permissions (mkstemp's 0600 would make the finished video
    private)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


class VideoWriter:
    """``with VideoWriter(out, 512, 512, audio=(samples, rate)) as w: w.write(frames)``.

    frames: (N, H, W, 3) uint8 RGB. ``max_frames`` trims the video (to the audio's length);
    frames beyond it are dropped. audio: ((channels, n) float32 in [-1, 1], rate), or a reader
    with ``rate``, ``channels`` and ``read(n)`` (``runtime.audio.AudioStream``: read as the video
    advances, so the audio is never whole in memory).
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: int | Fraction = 25,
        audio: tuple[np.ndarray, int] | Any | None = None,
        max_frames: int | None = None,
        crf: int = 18,
        preset: str = "medium",
    ):
        import av

        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise MediaError(f"output folder {self.path.parent} does not exist")
        if width % 2 or height % 2:
            raise MediaError(f"H.264 needs even frame sizes, got {width}x{height}")
        self.tmp: Path | None = None
        self.fps, self.max_frames, self.frames_written = fps, max_frames, 0
        self._container: Any = None
        with self._writing():
            self.tmp = _own_partial(self.path)
            self._container = av.open(str(self.tmp), "w", format="mp4")
        self._video = self._container.add_stream("libx264", rate=fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(crf), "preset": preset}
        self._audio = None
        if audio is not None:
            self._source = _ArraySource(*audio) if isinstance(audio, tuple) else audio
            self._rate, self._audio_pos = self._source.rate, 0
            layout = "mono" if self._source.channels == 1 else "stereo"
            self._audio = self._container.add_stream("aac", rate=self._rate, layout=layout)
            self._layout = layout

    def write(self, frames: np.ndarray) -> None:
        """Encode (N, H, W, 3) uint8 frames, then mux the audio up to the new video time."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
            )
        with self._writing():
            self._encode(frames)

    def _encode(self, frames: np.ndarray) -> None:
        import av

        for img in frames:
            if self.max_frames is not None and self.frames_written >= self.max_frames:
                break
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = 1 / Fraction(self.fps)
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
        self._mux_audio(self.frames_written / self.fps, final=False)

    def _mux_audio(self, until_seconds: float | Fraction | None, final: bool) -> None:
        """Encode audio up to ``until_seconds`` (None: to its end) in AAC-sized frames; only
        the very last frame (``final``) may be short."""
        import av

        if self._audio is None:
            return
        limit = None if until_seconds is None else int(until_seconds * self._rate)
        while True:
            want = AUDIO_CHUNK if limit is None else min(AUDIO_CHUNK, limit - self._audio_pos)
            if want <= 0 or (want < AUDIO_CHUNK and not final):
                return
            chunk = self._source.read(want)
            if chunk.shape[1] == 0:
                return
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self._layout)
            frame.sample_rate, frame.pts = self._rate, self._audio_pos
            frame.time_base = Fraction(1, self._rate)
            self._container.mux(self._audio.encode(frame))
            self._audio_pos += chunk.shape[1]
            if chunk.shape[1] < want:  # the audio ended
                return

    def close(self, trim_audio: bool = False) -> Path:
        """Flush, finish the file and move it into place; returns the final path.
        ``trim_audio``: end the audio with the video (a partial video kept after a stop)."""
        with self._writing():
            self._mux_audio(self.frames_written / self.fps if trim_audio else None, final=True)
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._container.mux(self._audio.encode(None))
            self._container.close()
            assert self.tmp is not None
            self.tmp.replace(self.path)
        log.info("wrote %s (%d frames)", self.path, self.frames_written)
        return self.path

    @contextlib.contextmanager
    def _writing(self):
        """Write errors (a full disk, a folder gone read-only) as a MediaError, the partial
        file removed."""
        import av

        try:
            yield
        except (OSError, av.error.FFmpegError) as exc:
            self.abort()
            raise MediaError(
                f"writing {self.path} failed ({exc}): is the disk full or the folder no longer "
                "writable? Nothing was written there"
            ) from exc

    def abort(self) -> None:
        """Drop the partial file (on errors and interrupts)."""
        try:
            if self._container is not None:
                self._container.close()
        except Exception:  # the container may be unusable after the error that got us here
            log.debug("closing the partial container failed", exc_info=True)
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def to_uint8_frames(pixels) -> np.ndarray:
    """Decoder output (N, 3, H, W) in [-1, 1] (host torch tensor or numpy) -> (N, H, W, 3) uint8.

    numpy, not torch: it runs on the writer thread, where torch ops would compete with the
    generating thread for torch's OpenMP pool (measured: end to end 17.7 s instead of 11.1 s
    on the 2-core development machine). Elementwise float32 ops and round-half-even give the
    same bytes as the torch expression of the official ``(x / 2 + 0.5).clamp(0, 1)``."""
    x = pixels.detach().cpu().numpy() if hasattr(pixels, "detach") else np.asarray(pixels)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"pixels must be (N, 3, H, W), got {x.shape}")
    x = x.astype(np.float32, copy=False)
    x = np.round(np.clip(x / np.float32(2) + np.float32(0.5), 0, 1) * np.float32(255))
    return np.ascontiguousarray(x.astype(np.uint8).transpose(0, 2, 3, 1))


class _ArraySource:
    """An in-memory track with the reader interface of ``AudioStream``."""

    def __init__(self, samples: np.ndarray, rate: int):
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self.rate, self.channels, self._pos = rate, self.samples.shape[0], 0

    def read(self, n: int) -> np.ndarray:
        out = self.samples[:, self._pos : self._pos + n]
        self._pos += out.shape[1]
        return np.ascontiguousarray(out)


def host_frames(pixels, ready=None) -> np.ndarray:
    """Decoder output (N, 3, H, W) on any device -> (N, H, W, 3) uint8 on the host; frames
    that already are (N, H, W, 3) uint8 (super-resolution's output) are only copied.

    On a GPU the copy runs on its own stream after ``ready`` (an event recorded when the decode
    was enqueued) into pinned memory, so it overlaps the next clip's denoising instead of
    waiting behind it on the generation stream."""
    import torch

    if pixels.device.type == "cuda":
        stream = torch.cuda.Stream(pixels.device)
        with torch.cuda.stream(stream):
            if ready is not None:
                stream.wait_event(ready)
            pixels.record_stream(stream)  # keep the allocator from reusing it mid-copy
            host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
            host.copy_(pixels, non_blocking=True)
        stream.synchronize()
        pixels = host
    if pixels.dtype == torch.uint8:
        return np.ascontiguousarray(pixels.numpy())
    return to_uint8_frames(pixels)


class ClipWriter:
    """Converts and encodes clips on a worker thread while the caller makes the next one.

    ``put`` blocks when ``depth`` clips are waiting, so memory stays bounded; an error in the
    worker is raised in the caller at the next ``put`` (the partial file removed) or at
    ``close``. ``close`` finishes the file (everything put is written); ``abort`` drops what is
    queued and removes the file.
    """

    _STOP = object()

    def __init__(self, writer: VideoWriter, depth: int = 2):
        import queue
        import threading

        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancel = False
        self.clips_put = 0
        self._thread = threading.Thread(target=self._work, name="hallo2rt-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is not None or self._cancel:
                continue  # drain without work
            try:
                self.writer.write(host_frames(*item))
            except BaseException as exc:  # handed to the caller
                self._error = exc

    def put(self, pixels, ready=None) -> None:
        """Queue one clip's decoded pixels (N, 3, H, W) in [-1, 1], or finished (N, H, W, 3)
        uint8 frames (not modified afterwards)."""
        if self._error is not None:
            self.abort()  # nothing half-written stays behind, whatever the caller does next
            raise self._error
        if ready is None and pixels.device.type == "cuda":
            # the worker copies on its own stream: it must wait for the kernels that made
            # ``pixels`` (super-resolution's last blends may still be queued on this stream)
            import torch

            ready = torch.cuda.Event()
            ready.record()
        self._queue.put((pixels, ready))
        self.clips_put += 1

    def _join(self) -> None:
        if not self._thread.is_alive():  # joined already (an abort after an error)
            return
        self._queue.put(self._STOP)
        self._thread.join()

    def close(self, trim_audio: bool = False) -> Path:
        self._join()
        if self._error is not None:
            self.writer.abort()
            raise self._error
        return self.writer.close(trim_audio)

    def abort(self) -> None:
        self._cancel = True
        self._join()
        self.writer.abort()


class VideoReader:
    """Sequential decode of a file's first video stream as (n, H, W, 3) uint8 RGB batches.

    Opening checks the file; ``width``, ``height``, ``fps`` (a Fraction) and ``frames`` (the
    container's count, 0 when unknown) describe it. Only one batch is in memory at a time."""

    def __init__(self, path: str | Path):
        import av

        self.path = Path(path)
        if not self.path.is_file():
            raise MediaError(f"video file {self.path} does not exist")
        try:
            self._container = av.open(str(self.path))
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.path} could not be opened as a video ({exc})") from exc
        if not self._container.streams.video:
            self._container.close()
            raise MediaError(f"{self.path} has no video stream")
        stream = self._container.streams.video[0]
        self._stream = stream
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.base_rate
        self.fps = Fraction(rate) if rate else Fraction(25)
        self.frames = int(stream.frames or 0)
        self.has_audio = bool(self._container.streams.audio)

    def batches(self, n: int = 16):
        """Yields (<= n, H, W, 3) uint8 arrays until the stream ends."""
        import av

        batch = []
        try:
            for frame in self._container.decode(self._stream):
                batch.append(frame.to_ndarray(format="rgb24"))
                if len(batch) == n:
                    yield np.stack(batch)
                    batch = []
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.path}: the video could not be decoded ({exc})") from exc
        if batch:
            yield np.stack(batch)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
