"""`hallo2rt compare` on real MP4s: per-frame PSNR/SSIM paired frame by frame across decode
batches, the mouth region, frame-count / size / audio checks, and the gate's exit codes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hallo2rt.benchmarks.compare import compare_videos, psnr, ssim
from hallo2rt.cli import main
from hallo2rt.engines.errors import OptionError
from hallo2rt.runtime.media import MediaError

pytest.importorskip("av")
pytest.importorskip("pytorch_msssim")


def _video(path, frames: np.ndarray, audio: bool = True):
    from hallo2rt.runtime.video import VideoWriter

    sound = None
    if audio:
        t = np.arange(int(16000 * len(frames) / 25)) / 16000
        sound = ((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None], 16000)
    with VideoWriter(path, frames.shape[2], frames.shape[1], audio=sound, crf=0) as w:
        w.write(frames)
    return path


def _frames(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Smooth moving gradients (H.264 keeps them well) with a per-frame brightness."""
    y, x = np.mgrid[0:size, 0:size]
    out = [
        np.stack([(x * 3 + i * 5) % 256, (y * 3 + seed * 40) % 256, (x + y + i) % 256], -1)
        for i in range(n)
    ]
    return np.asarray(out, dtype=np.uint8)


def _decoded(path) -> np.ndarray:
    from hallo2rt.runtime.video import VideoReader

    with VideoReader(path) as r:
        return np.concatenate(list(r.batches(7)))


def test_metrics_on_known_images():
    a = torch.from_numpy(_frames(2)).permute(0, 3, 1, 2).double()
    b = a + 4.0
    assert torch.allclose(
        psnr(a, b), torch.full((2,), 10 * math.log10(255**2 / 16), dtype=torch.float64)
    )
    assert torch.isinf(psnr(a, a)).all()
    assert torch.allclose(ssim(a.float(), a.float()), torch.ones(2))
    assert (ssim(a.float(), (255 - a).float()) < 0.5).all()  # an inverted image is far off
    assert torch.isnan(ssim(a[..., :2, :2].float(), a[..., :2, :2].float())).all()  # too small


def test_frames_are_paired_across_batches_and_match_an_independent_psnr(tmp_path):
    """20 frames (more than one 16-frame batch of each reader): every per-frame value equals
    PSNR computed here with numpy on the decoded frames; the mouth values on the crop."""
    ref = _video(tmp_path / "ref.mp4", _frames(20))
    noisy = _frames(20).astype(np.int16)
    noisy[5:] += np.random.default_rng(0).integers(-20, 21, noisy[5:].shape).astype(np.int16)
    out = _video(tmp_path / "out.mp4", np.clip(noisy, 0, 255).astype(np.uint8))
    r = compare_videos(ref, out, mouth=(10.0, 20.0, 42.0, 40.0))
    a, b = _decoded(ref).astype(np.float64), _decoded(out).astype(np.float64)
    mse = ((a - b) ** 2).reshape(20, -1).mean(1)
    crop = ((a - b)[:, 20:40, 10:42] ** 2).reshape(20, -1).mean(1)
    with np.errstate(divide="ignore"):  # lossless: the first 5 frames are identical (inf dB)
        want, want_mouth = 10 * np.log10(255**2 / mse), 10 * np.log10(255**2 / crop)
    assert r.compared == 20 and r.frames == (20, 20) and r.size == (64, 64)
    np.testing.assert_allclose(r.per_frame["psnr"], want, rtol=1e-9)
    np.testing.assert_allclose(r.per_frame["mouth_psnr"], want_mouth, rtol=1e-9)
    assert r.psnr.worst_frame >= 5 and r.psnr.min == pytest.approx(want.min())
    assert min(r.per_frame["ssim"][5:]) < max(r.per_frame["ssim"][:5])
    assert r.problems == [] and r.audio["max_abs_diff"] < 0.05


def test_counts_sizes_audio_and_boxes_are_checked(tmp_path):
    ref = _video(tmp_path / "ref.mp4", _frames(20))
    short = _video(tmp_path / "short.mp4", _frames(12), audio=False)
    r = compare_videos(ref, short)
    assert r.frames == (20, 12) and r.compared == 12
    assert "frame counts differ: 20 vs 12" in r.problems
    assert "only the reference has audio" in r.problems
    big = _video(tmp_path / "big.mp4", _frames(4, size=96))
    with pytest.raises(MediaError, match="differ in size"):
        compare_videos(ref, big)
    with pytest.raises(OptionError, match="not inside the 64x64 frames"):
        compare_videos(ref, ref, mouth=(10, 10, 80, 20))


def test_the_cli_reports_gates_and_writes_json(tmp_path, capsys):
    ref = _video(tmp_path / "ref.mp4", _frames(6))
    out = _video(tmp_path / "out.mp4", np.clip(_frames(6).astype(int) + 30, 0, 255).astype("u1"))
    assert main(["compare", str(ref), str(ref), "--min-psnr", "60"]) == 0
    assert "PSNR       mean inf dB" in capsys.readouterr().out
    report = tmp_path / "r.json"
    code = main(["compare", str(ref), str(out), "--min-psnr", "40", "--json", str(report)])
    captured = capsys.readouterr()
    assert code == 1 and "FAILED mean PSNR" in captured.err
    data = json.loads(report.read_text())
    assert len(data["per_frame"]["psnr"]) == 6 and data["psnr"]["mean"] < 40
    assert main(["compare", str(ref), str(out)]) == 0  # no gate: a measurement only
    assert main(["compare", str(ref), str(tmp_path / "none.mp4")]) == 1
    assert "does not exist" in capsys.readouterr().err
