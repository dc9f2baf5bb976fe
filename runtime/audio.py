"""Driving audio: decode, resample, cut into the official 60 s segments, wav2vec features,
5-frame windows (docs/model.md §1.3).

Decoding uses PyAV (any container/codec its FFmpeg reads). The encoder itself is passed in as a
callable, so this module works with any backend and never imports model code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .media import MediaError

SAMPLE_RATE = 16000  # wav2vec2's rate
FPS = 25  # video frames per second
SEGMENT_SECONDS = 60  # the official cut_audio length


def _open_audio(path: str | Path):
    import av  # lazy: PyAV is only needed when media is read or written

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"audio file {path} does not exist")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise MediaError(
            f"{path} could not be opened as audio ({exc}); use a file FFmpeg "
            "reads, e.g. WAV, MP3, M4A, FLAC or a video with sound"
        ) from exc
    if not container.streams.audio:
        container.close()
        raise MediaError(f"{path} has no audio stream")
    return container


def load_audio(
    path: str | Path, sample_rate: int | None = SAMPLE_RATE, mono: bool = True
) -> tuple[np.ndarray, int]:
    """Decode the first audio stream -> (samples (channels, n) float32 in [-1, 1], rate).

    ``sample_rate=None`` keeps the native rate; ``mono`` downmixes (FFmpeg's resampler).
    """
    import av

    container = _open_audio(path)
    try:
        stream = container.streams.audio[0]
        rate = sample_rate or stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        layout = "mono" if mono or channels == 1 else "stereo"  # surround is downmixed
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks = []
        for frame in container.decode(stream):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]  # flush
    except av.error.FFmpegError as exc:
        raise MediaError(f"{path}: the audio could not be decoded ({exc})") from exc
    finally:
        container.close()
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise MediaError(f"{path} contains no audio samples")
    return np.concatenate(chunks, axis=1).astype(np.float32), rate


@dataclass(frozen=True)
class Segment:
    """One official 60 s audio segment."""

    start: int  # first sample (16 kHz)
    stop: int  # one past the last sample
    frames: int  # video frames it yields, padding included
    pad_samples: int  # zeros appended after normalisation (last segment only)


def frames_for_samples(n_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> int:
    """ceil(n / sample_rate * fps), as the official ``seq_len``."""
    return math.ceil(n_samples / sample_rate * fps)


def plan_segments(
    n_samples: int,
    clip_frames: int = 16,
    sample_rate: int = SAMPLE_RATE,
    fps: int = FPS,
    segment_seconds: int = SEGMENT_SECONDS,
) -> list[Segment]:
    """The official cut: 60 s segments; only the *last* is padded, to a multiple of
    ``clip_frames`` of its *own* frame count (docs/model.md §1.3, §7), so the total may still not
    be a multiple of 16 and the clip loop drops the tail (``N // 16`` clips)."""
    if n_samples <= 0:
        raise MediaError("the driving audio is empty")
    seg = segment_seconds * sample_rate
    starts = list(range(0, n_samples, seg))
    out = []
    for i, start in enumerate(starts):
        stop = min(start + seg, n_samples)
        frames = frames_for_samples(stop - start, sample_rate, fps)
        pad = 0
        if i == len(starts) - 1 and frames % clip_frames:
            extra = clip_frames - frames % clip_frames
            pad, frames = extra * (sample_rate // fps), frames + extra
        out.append(Segment(start, stop, frames, pad))
    return out


def normalize_waveform(waveform: torch.Tensor) -> torch.Tensor:
    """Wav2Vec2FeatureExtractor(do_normalize=True): zero mean, unit variance per row (B, S)."""
    mean = waveform.mean(dim=-1, keepdim=True)
    var = waveform.var(dim=-1, keepdim=True, unbiased=False)
    return (waveform - mean) / torch.sqrt(var + 1e-7)


def audio_features(
    wave: np.ndarray, encode: Callable[[torch.Tensor, int], torch.Tensor], clip_frames: int = 16
) -> tuple[torch.Tensor, int]:
    """16 kHz mono (n,) -> (features (N, layers, C), audio_length frames before padding).

    ``encode(waveform (1, S), seq_len) -> (1, seq_len, layers, C)`` is the audio encoder.
    Each segment is normalised on its own, then zero-padded (official order).
    """
    feats = []
    plan = plan_segments(len(wave), clip_frames)
    for seg in plan:
        x = normalize_waveform(
            torch.from_numpy(np.ascontiguousarray(wave[seg.start : seg.stop], dtype=np.float32))[
                None
            ]
        )
        x = torch.nn.functional.pad(x, (0, seg.pad_samples))
        feats.append(encode(x, seg.frames)[0])
    audio_length = sum(frames_for_samples(s.stop - s.start) for s in plan)
    return torch.cat(feats), audio_length


def audio_windows(features: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Per-frame features (N, layers, C) -> windows (N, window, layers, C).

    Frame i takes i-2 .. i+2 clamped to [0, N-1] over the whole concatenated sequence.
    """
    n = features.shape[0]
    return features[_window_index(0, n, n, window).to(features.device)]


def resample(
    wave: np.ndarray, rate: int, target: int = SAMPLE_RATE, mono: bool = True
) -> np.ndarray:
    """(channels, n) float32 at ``rate`` -> (1 or channels, m) at ``target`` (FFmpeg resampler)."""
    import av

    layout = "mono" if wave.shape[0] == 1 else "stereo"
    out_layout = "mono" if mono else layout
    resampler = av.AudioResampler(format="fltp", layout=out_layout, rate=target)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(wave, dtype=np.float32), format="fltp", layout=layout
    )
    frame.sample_rate = rate
    chunks = [f.to_ndarray() for f in resampler.resample(frame)]
    chunks += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(chunks, axis=1)


class AudioStream:
    """Sequential decode of a file's first audio stream, resampled on the fly to ``rate``
    (None: native) and mono or the native layout (surround downmixed to stereo).

    ``read(n)`` returns (channels, m) float32 with m == n except at the end of the audio, so a
    whole hour is never in memory; opening it checks that the file is readable audio.
    """

    def __init__(self, path: str | Path, rate: int | None = None, mono: bool = False):
        import av

        self.path = Path(path)
        self._container = _open_audio(path)
        stream = self._container.streams.audio[0]
        self.rate = rate or stream.codec_context.sample_rate
        self.channels = 1 if mono or stream.codec_context.channels == 1 else 2
        layout = "mono" if self.channels == 1 else "stereo"
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.rate)
        self._frames = self._container.decode(stream)
        self._pending: list[np.ndarray] = []
        self._buffered = 0
        self._done = False

    def _pull(self) -> None:
        import av

        try:
            frame = next(self._frames, None)
            out = self._resampler.resample(frame)  # None flushes the resampler
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.path}: the audio could not be decoded ({exc})") from exc
        if frame is None:
            self._done = True
        for f in out:
            chunk = f.to_ndarray().astype(np.float32, copy=False)
            self._pending.append(chunk)
            self._buffered += chunk.shape[1]

    def read(self, n: int) -> np.ndarray:
        """Up to ``n`` samples per channel (fewer only at the end)."""
        while self._buffered < n and not self._done:
            self._pull()
        data = (
            np.concatenate(self._pending, axis=1)
            if self._pending
            else np.zeros((self.channels, 0), np.float32)
        )
        out, rest = data[:, :n], data[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self._buffered = rest.shape[1]
        return np.ascontiguousarray(out)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_samples(path: str | Path, rate: int = SAMPLE_RATE, block: int = 1 << 20) -> int:
    """Samples of the file's audio at ``rate`` (a decode pass that keeps nothing)."""
    n = 0
    with AudioStream(path, rate, mono=True) as stream:
        while True:
            got = stream.read(block).shape[1]
            n += got
            if got < block:
                return n


def _window_index(start: int, count: int, n: int, window: int = 5) -> torch.Tensor:
    """Frame indices (count, window) of the windows of frames start..start+count-1 over a
    sequence of n frames: frames past the end take the last frame's window (the last clip's
    padding); each window's i-2..i+2 is clamped to [0, n-1] (official)."""
    half = window // 2
    frames = torch.arange(start, start + count).clamp(max=n - 1)
    return (frames[:, None] + torch.arange(-half, half + 1)[None]).clamp(0, n - 1)


class TensorFeatures:
    """Per-frame features (N, layers, C) held in memory, served as clip windows."""

    def __init__(self, features: torch.Tensor, audio_length: int | None = None):
        self.features, self.frames = features, features.shape[0]
        self.audio_length = audio_length if audio_length is not None else self.frames

    def windows(self, start: int, count: int) -> torch.Tensor:
        """(count, 5, layers, C) windows of frames start.. (docs/model.md §1.3)."""
        return self.features[_window_index(start, count, self.frames)]


class StreamedFeatures:
    """Audio features computed one official 60 s segment at a time, as the clips need them.

    A first decode pass counts the samples (the segment plan needs the total: only the last
    segment is padded); then segments are decoded, normalised, padded and encoded in order, and
    a segment is dropped once no later window can reach it. At most two segments of features
    and one of samples are in memory, whatever the audio length.
    """

    def __init__(
        self,
        path: str | Path,
        encode: Callable[[torch.Tensor, int], torch.Tensor],
        clip_frames: int = 16,
    ):
        self.plan = plan_segments(count_samples(path), clip_frames)
        self.offsets = np.cumsum([0] + [s.frames for s in self.plan])  # first frame per segment
        self.frames = int(self.offsets[-1])  # N, padding included
        self.audio_length = sum(frames_for_samples(s.stop - s.start) for s in self.plan)
        self._encode, self._path = encode, path
        self._stream: AudioStream | None = None
        self._cache: dict[int, torch.Tensor] = {}
        self._next = 0  # next segment to compute

    def _segment(self, k: int) -> torch.Tensor:
        while self._next <= k:
            if self._stream is None:
                self._stream = AudioStream(self._path, SAMPLE_RATE, mono=True)
            seg = self.plan[self._next]
            wave = torch.from_numpy(self._stream.read(seg.stop - seg.start))  # (1, S)
            x = torch.nn.functional.pad(normalize_waveform(wave), (0, seg.pad_samples))
            self._cache[self._next] = self._encode(x, seg.frames)[0]  # (frames, layers, C)
            self._next += 1
        if self._next == len(self.plan) and self._stream is not None:
            self._stream.close()
            self._stream = None
        return self._cache[k]

    def windows(self, start: int, count: int) -> torch.Tensor:
        """(count, 5, layers, C) windows of frames start.. (docs/model.md §1.3)."""
        idx = _window_index(start, count, self.frames)
        lo, hi = int(idx.min()), int(idx.max())
        first = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        last = int(np.searchsorted(self.offsets, hi, side="right")) - 1
        for k in [k for k in self._cache if k < first]:  # no later window reaches these
            del self._cache[k]
        span = torch.cat([self._segment(k) for k in range(first, last + 1)])
        return span[idx - int(self.offsets[first])]
