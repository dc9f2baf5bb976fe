"""MDX-Net chunking: an identity stand-in model must give the input back (band-limited)."""

from __future__ import annotations

import numpy as np
import pytest

from hallo2rt.runtime.audio import resample
from hallo2rt.runtime.media import MediaError
from hallo2rt.runtime.vocals import MDXParams, demix, separate_vocals

from .fake_face_models import write_mdx_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _tone(seconds, rate=44100):
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)]).astype(
        np.float32
    )


def test_identity_model_reconstructs_the_band_across_chunk_boundaries():
    p = MDXParams(n_fft=2048, dim_f=512, dim_t=32)  # small chunks: many overlaps in 1.5 s
    mix = _tone(1.5)
    out = demix(mix, lambda spec: spec, p)
    assert out.shape == mix.shape
    err = np.abs(out - mix)[:, 2048:-2048].max()  # away from the zero-padded ends
    assert err < 1e-3, err


def test_the_stem_is_what_the_model_returns():
    p = MDXParams(n_fft=2048, dim_f=512, dim_t=32)
    out = demix(_tone(1.0), lambda spec: spec * 0.5, p)
    np.testing.assert_allclose(out[:, 4096:-4096], _tone(1.0)[:, 4096:-4096] * 0.5, atol=1e-3)


def test_release_layout_is_read_by_hash(tmp_path):
    write_mdx_model(tmp_path)
    sep = tmp_path / "audio_separator"
    mix = _tone(1.0)
    out = separate_vocals(mix, tmp_path)
    assert np.abs(out - mix)[:, 2048:-2048].max() < 1e-3
    (sep / "mdx_model_data.json").write_text("{}")
    with pytest.raises(MediaError, match="not listed"):
        separate_vocals(mix, tmp_path)
    with pytest.raises(MediaError, match="Kim_Vocal_2.onnx"):
        separate_vocals(mix, tmp_path / "nowhere")


def test_resample_keeps_duration_and_downmixes():
    out = resample(_tone(1.0), 44100, 16000)
    assert out.shape[0] == 1 and abs(out.shape[1] - 16000) <= 32
