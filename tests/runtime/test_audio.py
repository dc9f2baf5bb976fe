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
