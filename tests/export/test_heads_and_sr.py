"""Conditioning heads, wav2vec framing, CodeFormer and RealESRGAN on the tiny tree."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from hallo2rt.export.modules import build_module
from hallo2rt.random_weights import full_config
from hallo2rt.runtime.audio import normalize_waveform


def test_image_proj_uncond_is_layernorm_of_the_bias_not_zeros(tiny):
    proj = tiny["image_proj"]
    with torch.no_grad():
        uncond = proj(torch.zeros(1, 64))
        want = proj.norm(proj.proj.bias.reshape(1, 4, 32))
    torch.testing.assert_close(uncond, want)
    assert uncond.abs().max() > 0.1


def test_audio_proj_flattens_window_layer_channel_per_frame(tiny):
    proj = tiny["audio_proj"]
    g = torch.Generator().manual_seed(0)
    win = torch.randn(1, 3, 5, 2, 32, generator=g)  # (B, F, window, layers, C)
    with torch.no_grad():
        got = proj(win)
        for f in range(3):
            x = F.relu(proj.proj1(win[0, f].reshape(-1)))  # (window, layer, channel) order
            x = proj.proj3(F.relu(proj.proj2(x))).reshape(8, 32)
            torch.testing.assert_close(got[0, f], proj.norm(x))


def test_wav2vec_runs_the_transformer_at_the_video_rate(tiny):
    with torch.no_grad():
        out = tiny["audio_encoder"](normalize_waveform(torch.randn(1, 16000)), 25)
    assert out.shape == (1, 25, 2, 32)  # (B, frames, all layers, width)


def test_face_locator_maps_a_mask_to_the_latent_grid(tiny):
    with torch.no_grad():
        out = tiny["face_locator"](torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 32, 8, 8)


def test_codeformer_attends_across_frames_within_a_window_only(tiny):
    cf = tiny["face_restorer"]
    side = cf.cfg.img_size
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 2, 3, side, side, generator=g) * 2 - 1  # 2 windows x 2 frames
    w = torch.tensor(0.5)
    with torch.no_grad():
        out = cf(frames, w)
        other = frames.clone()
        other[0, 1] = torch.rand(3, side, side, generator=g) * 2 - 1  # change window 0, frame 1
        out2 = cf(other, w)
    assert out.shape == frames.shape
    assert not torch.allclose(out2[0, 0], out[0, 0], atol=1e-4)  # temporal attention
    assert torch.equal(out2[1], out[1])  # windows are independent


def test_codeformer_fidelity_zero_skips_the_fusion(tiny):
    cf = copy.deepcopy(tiny["face_restorer"])
    side = cf.cfg.img_size
    x = torch.rand(1, 1, 3, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a0, a1 = cf(x, torch.tensor(0.0)), cf(x, torch.tensor(1.0))
        for p in cf.fuse_convs_dict.parameters():
            p.add_(0.5)
        assert torch.equal(cf(x, torch.tensor(0.0)), a0)
        assert not torch.allclose(cf(x, torch.tensor(1.0)), a1, atol=1e-4)
    with torch.device("meta"):
        full = build_module("face_restorer", full_config())
    assert sorted(full.enc_taps.values(), key=int) == ["32", "64", "128", "256"]
    # official fuse_encoder_block / fuse_generator_block indices
    assert full.enc_taps == {14: "32", 11: "64", 8: "128", 5: "256"}
    assert full.gen_taps == {9: "32", 12: "64", 15: "128", 18: "256"}


def test_realesrgan_x2_doubles_the_size(tiny):
    with torch.no_grad():
        out = tiny["bg_upsampler"](torch.rand(1, 3, 32, 48))
    assert out.shape == (1, 3, 64, 96)
    assert tiny["bg_upsampler"].conv_first.in_channels == 12  # pixel-unshuffled input
