"""The streamed MP4 writer: frame count, fps, size, audio duration, no partial files."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from hallo2rt.runtime.media import MediaError
from hallo2rt.runtime.video import VideoWriter, to_uint8_frames

av = pytest.importorskip("av")


def probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
    with av.open(str(path)) as c:
        audio = c.streams.audio
        a_dur = None
        if audio:
            a_dur = sum(f.samples for f in c.decode(audio[0])) / audio[0].rate
        v = c.streams.video[0]
        return dict(
            frames=frames,
            fps=v.average_rate,
            size=(v.width, v.height),
            audio_seconds=a_dur,
            audio_rate=audio[0].rate if audio else None,
        )


def test_frames_fps_size_and_audio_are_written(tmp_path):
    rate, seconds = 16000, 1.23
    audio = np.sin(np.linspace(0, 200, int(rate * seconds)))[None].astype(np.float32) * 0.3
    n_frames = int(np.ceil(seconds * 25))  # 31
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 32, 48, audio=(audio, rate), max_frames=n_frames) as w:
        for _ in range(3):  # three "clips" of 16 frames; the tail beyond the audio is dropped
            w.write(np.random.default_rng(0).integers(0, 255, (16, 48, 32, 3), dtype=np.uint8))
    info = probe(out)
    assert info["frames"] == n_frames and info["fps"] == 25 and info["size"] == (32, 48)
    assert info["audio_rate"] == rate
    assert abs(info["audio_seconds"] - seconds) < 0.07  # AAC priming/padding only
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_an_error_leaves_no_file_and_keeps_an_older_one(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, 32, 32) as w:
            w.write(np.zeros((4, 32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"older result")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, 32, 32) as w:
            w.write(np.zeros((4, 32, 32, 3), np.uint8))
            raise KeyboardInterrupt
    assert out.read_bytes() == b"older result" and len(list(tmp_path.iterdir())) == 1


def test_bad_destinations_and_frames_are_refused(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "o.mp4", 32, 32)
    with pytest.raises(MediaError, match="even"):
        VideoWriter(tmp_path / "o.mp4", 33, 32)
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(tmp_path / "o.mp4", 32, 32) as w:
            w.write(np.zeros((1, 32, 32, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_decoder_pixels_map_to_uint8_like_the_official_pipeline():
    px = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = to_uint8_frames(px)
    assert out.shape == (1, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    for dtype in (torch.float32, torch.float16):  # the same bytes as the torch expression
        px = (torch.randn(2, 3, 17, 9, generator=torch.Generator().manual_seed(0)) * 1.2).to(dtype)
        want = ((px.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        np.testing.assert_array_equal(to_uint8_frames(px), want.permute(0, 2, 3, 1).numpy())


def test_clip_writer_encodes_in_order_and_hands_back_worker_errors(tmp_path):
    from hallo2rt.runtime.video import ClipWriter

    av = pytest.importorskip("av")
    clips = [torch.full((4, 3, 16, 16), v) for v in (-1.0, 0.0, 1.0)]
    sink = ClipWriter(VideoWriter(tmp_path / "ok.mp4", 16, 16), depth=1)
    for c in clips:
        sink.put(c)
    sink.close()
    with av.open(str(tmp_path / "ok.mp4")) as f:
        means = [fr.to_ndarray(format="rgb24").mean() for fr in f.decode(video=0)]
    assert len(means) == 12 and means[0] < means[4] < means[8]  # order kept

    sink = ClipWriter(VideoWriter(tmp_path / "bad.mp4", 16, 16))
    sink.put(torch.zeros(3, 8, 8))  # not (N, 3, H, W): the conversion fails in the worker
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        for _ in range(3):
            sink.put(clips[0])
        sink.close()
    assert not list(tmp_path.glob("*bad*"))


def test_gpu_frames_put_without_an_event_get_one_before_the_worker_copies(monkeypatch):
    """Super-resolution hands finished frames over without an event; the worker copies on its
    own stream, so put() must record one on the caller's stream (GPU_REVIEW #4)."""
    from hallo2rt.runtime import video

    events = []

    class FakeEvent:
        def __init__(self):
            self.recorded = False
            events.append(self)

        def record(self):
            self.recorded = True

    handed = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(
        video, "host_frames", lambda pixels, ready: handed.append(ready) or np.zeros((1, 4, 4, 3))
    )

    class Writer:
        def write(self, frames):
            pass

        def close(self, trim_audio=False):
            pass

    gpu_frames = types.SimpleNamespace(device=torch.device("cuda"))
    sink = video.ClipWriter(Writer())
    sink.put(gpu_frames)
    given = FakeEvent()
    sink.put(gpu_frames, given)  # an event from the caller is used as it is
    sink.put(torch.zeros(1, 4, 4, 3, dtype=torch.uint8))  # CPU frames need none
    sink.close()
    assert handed[0] is events[0] and events[0].recorded
    assert handed[1] is given and handed[2] is None and len(events) == 2
