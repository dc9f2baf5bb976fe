"""Our modules vs diffusers / transformers on the same random weights (dev dependency only).

Covers the blocks that exist there: the VAE, the SD UNet blocks (through the ReferenceNet bank:
every norm1 input depends on all resnets, attentions and samplers before it) and wav2vec2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hallo2rt.export.modules import reference_tokens_official

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def _close(a, b, rtol=1e-4):
    err = (a - b).abs().max().item()
    assert err <= rtol * max(b.abs().max().item(), 1e-6), f"max |diff| {err}"


def test_vae_matches_diffusers_autoencoderkl(tiny, tiny_root):
    ref = diffusers.AutoencoderKL.from_pretrained(tiny_root / "sd-vae-ft-mse").eval()
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want = ref.encode(pixels).latent_dist.mean * 0.18215
        got = tiny["vae_encoder"](pixels)
        _close(got, want)
        want_px = ref.decode(want / 0.18215).sample
        _close(tiny["vae_decoder"](want), want_px)


def test_reference_bank_matches_diffusers_unet_norm1_outputs(tiny, tiny_root):
    ref = diffusers.UNet2DConditionModel.from_config(
        diffusers.UNet2DConditionModel.load_config(tiny_root / "stable-diffusion-v1-5/unet")
    )
    ours = tiny["reference_unet"]
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert (
        sorted(missing)
        == ["conv_norm_out.bias", "conv_norm_out.weight", "conv_out.bias", "conv_out.weight"]
        and unexpected == []
    )
    captured = []
    blocks = [
        m for m in ref.modules() if isinstance(m, diffusers.models.attention.BasicTransformerBlock)
    ]
    assert len(blocks) == len(ours.hooked_blocks)
    for blk in blocks:
        blk.norm1.register_forward_hook(lambda mod, inp, out: captured.append(out))
    torch.manual_seed(0)
    latents = torch.randn(6, 4, 8, 8)
    tokens = reference_tokens_official(torch.randn(2, 4, 32))
    with torch.no_grad():
        ref.eval()(latents, torch.tensor(0), encoder_hidden_states=tokens)
        bank = ours(latents, torch.tensor(0), tokens)
    assert len(captured) == len(bank) == 16
    for got, want in zip(bank, captured, strict=True):
        _close(got, want)


def test_wav2vec_matches_transformers_with_hallo2_interpolation(tiny, tiny_root):
    model = transformers.Wav2Vec2ForCTC.from_pretrained(tiny_root / "wav2vec/wav2vec2-base-960h")
    w2v = model.wav2vec2.eval()
    torch.manual_seed(0)
    wave = torch.randn(1, 24000)
    seq_len = 38  # ceil(1.5 s * 25 fps)
    with torch.no_grad():
        feats = w2v.feature_extractor(wave)  # (1, 512, T50)
        feats = F.interpolate(feats, size=seq_len, mode="linear", align_corners=True)
        hidden, _ = w2v.feature_projection(feats.transpose(1, 2))
        layers = []  # hooks: output_hidden_states handling differs across transformers versions
        for layer in w2v.encoder.layers:
            layer.register_forward_hook(
                lambda m, i, o: layers.append(o[0] if isinstance(o, tuple) else o)
            )
        w2v.encoder(hidden)
        want = torch.stack(layers, dim=2)  # hidden_states[1:]: the output of every layer
        got = tiny["audio_encoder"](wave, seq_len)
    assert got.shape == (1, seq_len, 2, 32)
    _close(got, want)
