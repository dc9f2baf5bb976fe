"""Audio decoding, the official 60 s segmentation, features per segment, windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hallo2rt.runtime.audio import (
    audio_features,
    audio_windows,
    frames_for_samples,
    load_audio,
    normalize_waveform,
    plan_segments,
)
from hallo2rt.runtime.media import MediaError

from .media_helpers import write_audio, write_silent_video

pytest.importorskip("av")


def test_decode_downmix_and_resample_any_rate(tmp_path):
    src = write_audio(tmp_path / "a.wav", 1.5, rate=44100, channels=2)
    wave, rate = load_audio(tmp_path / "a.wav")
    assert rate == 16000 and wave.shape[0] == 1
    assert abs(wave.shape[1] - 24000) <= 32  # 1.5 s at 16 kHz (resampler delay aside)
    native, nrate = load_audio(tmp_path / "a.wav", sample_rate=None, mono=False)
    assert nrate == 44100 and native.shape == src.shape
    np.testing.assert_allclose(native, src, atol=2e-4)  # 16-bit PCM round trip


def test_compressed_audio_decodes(tmp_path):
    write_audio(tmp_path / "a.m4a", 1.0, rate=22050, channels=1, codec="aac")
    wave, rate = load_audio(tmp_path / "a.m4a")
    assert rate == 16000 and 15000 < wave.shape[1] < 17500


def test_missing_unreadable_and_silent_inputs_are_named(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(MediaError, match="could not be opened as audio"):
        load_audio(tmp_path / "text.wav")
    write_silent_video(tmp_path / "video.mp4")
    with pytest.raises(MediaError, match="no audio stream"):
        load_audio(tmp_path / "video.mp4")


def test_segments_follow_the_official_cut_and_last_segment_padding():
    sr = 16000
    plan = plan_segments(150 * sr)  # 60 + 60 + 30 s
    assert [(s.start, s.stop) for s in plan] == [
        (0, 60 * sr),
        (60 * sr, 120 * sr),
        (120 * sr, 150 * sr),
    ]
    assert [s.frames for s in plan] == [1500, 1500, 752]  # 750 padded to 47 * 16
    assert [s.pad_samples for s in plan] == [0, 0, 2 * 640]
    assert sum(s.frames for s in plan) % 16 == 8  # official: the tail is dropped by N // 16
    single = plan_segments(sr + 1)  # 1 s + 1 sample: ceil -> 26 frames -> padded to 32
    assert [(s.frames, s.pad_samples) for s in single] == [(32, 6 * 640)]
    assert frames_for_samples(960_000) == 1500
    with pytest.raises(MediaError, match="empty"):
        plan_segments(0)


def test_features_normalise_each_segment_then_pad():
    sr = 16000
    wave = np.concatenate([np.full(60 * sr, 3.0), np.linspace(-1, 1, 2 * sr)]).astype(np.float32)
    wave[: 60 * sr] += np.random.default_rng(0).normal(size=60 * sr).astype(np.float32)
    seen = []

    def encode(x, seq_len):
        seen.append((x.clone(), seq_len))
        return torch.full((1, seq_len, 2, 3), float(len(seen)))

    feats, length = audio_features(wave, encode)
    assert [s for _, s in seen] == [1500, 64]  # 2 s -> 50 frames -> padded to 64
    assert length == 1550 and feats.shape == (1564, 2, 3)
    first, last = seen[0][0][0], seen[1][0][0]
    assert abs(first.mean()) < 1e-4 and abs(first.std() - 1) < 1e-3  # per-segment norm
    assert torch.equal(last[2 * sr :], torch.zeros(14 * 640))  # zeros appended after norm
    torch.testing.assert_close(
        last[: 2 * sr], normalize_waveform(torch.from_numpy(wave[60 * sr :])[None])[0]
    )


def test_windows_clamp_over_the_whole_sequence_across_clips_and_segments():
    feats = torch.arange(40.0)[:, None, None].expand(40, 2, 3)
    win = audio_windows(feats)
    assert win.shape == (40, 5, 2, 3)
    assert win[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert win[16, :, 0, 0].tolist() == [14, 15, 16, 17, 18]  # clip 1 reads clip 0's frames
    assert win[39, :, 0, 0].tolist() == [37, 38, 39, 39, 39]


def test_normalisation_matches_the_feature_extractor():
    wave = torch.randn(2, 1000) * 3 + 5
    norm = normalize_waveform(wave)
    torch.testing.assert_close(norm.mean(-1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.std(-1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)


def _fake_encoder(calls):
    """A deterministic stand-in encoder: per frame, the mean and std of its 640 samples."""

    def encode(x, seq_len):
        calls.append(seq_len)
        x = torch.nn.functional.pad(x[0], (0, seq_len * 640 - x.shape[1]))
        frames = x.reshape(seq_len, 640)
        return torch.stack([frames.mean(1), frames.std(1)], dim=1)[None, :, :, None]

    return encode


def test_streamed_features_equal_the_whole_file_features(tmp_path):
    """Two official segments (61.3 s): the streamed windows of every clip equal those of the
    features computed from the whole decoded file, with at most two segments held."""
    from hallo2rt.runtime.audio import AudioStream, StreamedFeatures, TensorFeatures

    write_audio(tmp_path / "a.wav", 61.3, rate=22050)
    wave, _ = load_audio(tmp_path / "a.wav")
    whole = TensorFeatures(*audio_features(wave[0], _fake_encoder([])))
    calls = []
    streamed = StreamedFeatures(tmp_path / "a.wav", _fake_encoder(calls), 16)
    assert (streamed.frames, streamed.audio_length) == (whole.frames, whole.audio_length)
    assert calls == []  # nothing is encoded before a clip needs it
    held = []
    for t in range(-(-whole.frames // 16)):
        torch.testing.assert_close(streamed.windows(16 * t, 16), whole.windows(16 * t, 16))
        held.append(len(streamed._cache))
    assert calls == [1500, 48] and max(held) == 2 and held[-1] == 1  # segment 0 dropped
    with AudioStream(tmp_path / "a.wav", 16000, mono=True) as s:
        chunks = [s.read(100_000) for _ in range(11)]
    assert [c.shape[1] for c in chunks][:9] == [100_000] * 9
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), wave)


def test_last_clip_windows_repeat_the_final_window():
    from hallo2rt.runtime.audio import TensorFeatures

    feats = TensorFeatures(torch.arange(20.0)[:, None, None])
    tail = feats.windows(16, 16)[:, :, 0, 0]
    assert tail[3].tolist() == [17, 18, 19, 19, 19]
    assert all(row.tolist() == [17, 18, 19, 19, 19] for row in tail[4:])
