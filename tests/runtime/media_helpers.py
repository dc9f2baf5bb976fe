"""Small media files written with PyAV for tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_audio(
    path: Path, seconds: float, rate: int = 44100, channels: int = 2, codec: str = "pcm_s16le"
) -> np.ndarray:
    """A sine (left 220 Hz, right 330 Hz) -> file; returns the float samples (channels, n)."""
    import av

    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    wave = np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in (220, 330)[:channels]])
    wave = wave.astype(np.float32)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = "s16" if codec == "pcm_s16le" else "fltp"
        data = (wave * 32767).astype(np.int16).T.reshape(1, -1) if fmt == "s16" else wave
        step = 1024
        for i in range(0, n, step):
            chunk = (
                data[:, i * channels : (i + step) * channels]
                if fmt == "s16"
                else data[:, i : i + step]
            )
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk), format=fmt, layout=layout
            )
            frame.sample_rate = rate
            frame.pts = i
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return wave


def write_silent_video(path: Path, frames: int = 5, size: int = 32) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = np.zeros((size, size, 3), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
