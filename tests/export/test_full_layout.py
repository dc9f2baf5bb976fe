"""Full-size architecture vs the released checkpoints' key lists, without allocating weights."""

from __future__ import annotations

import json

import pytest
import torch

from hallo2rt.export.config import (
    CodeFormerConfig,
    HeadsConfig,
    RRDBConfig,
    UNetConfig,
    VAEConfig,
    Wav2Vec2Config,
)
from hallo2rt.export.modules import build_module
from hallo2rt.random_weights import full_config, official_layout

REFERENCE_FILES = {
    "hallo2/net.pth": "net.json",
    "sd-vae-ft-mse/diffusion_pytorch_model.safetensors": "sd_vae_ft_mse.json",
    "wav2vec/wav2vec2-base-960h/model.safetensors": "wav2vec2_base_960h.json",
    "hallo2/net_g.pth": "codeformer_net_g.json",
    "stable-diffusion-v1-5/unet/diffusion_pytorch_model.safetensors": "sd15_unet.json",
    "motion_module/mm_sd_v15_v2.ckpt": "mm_sd_v15_v2.json",
}


def _reference_shapes(reference_dir, name):
    data = json.loads((reference_dir / name).read_text())
    return {t["key"]: tuple(t["shape"]) for t in data["tensors"]}, data


@pytest.mark.parametrize("path", sorted(REFERENCE_FILES))
def test_full_layout_equals_release(reference_dir, path):
    layout = {spec.path: spec for spec in official_layout(full_config())}
    expected, data = _reference_shapes(reference_dir, REFERENCE_FILES[path])
    got = layout[path].shapes
    assert sorted(set(expected) - set(got)) == [], "keys the release has and we do not"
    assert sorted(set(got) - set(expected)) == [], "keys we write that the release does not have"
    bad = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    assert bad == {}
    assert sum(int(torch.Size(s).numel()) for s in got.values()) == data["num_elements"]


def test_reference_configs_parse_to_the_full_config(reference_dir):
    def load(name):
        return json.loads((reference_dir / name).read_text())

    full = full_config()
    assert UNetConfig.from_json(load("unet_config.json")) == full.unet
    assert VAEConfig.from_json(load("vae_config.json")) == full.vae
    assert Wav2Vec2Config.from_json(load("wav2vec2_config.json")) == full.wav2vec
    heads = load("heads_kwargs.json")
    assert full.heads.face_locator_out == heads["FaceLocator"]["conditioning_embedding_channels"]
    assert full.heads.image_tokens == heads["ImageProjModel"]["clip_extra_context_tokens"]
    assert full.heads.audio_tokens == heads["AudioProjModel"]["context_tokens"]
    extra = load("unet_additional_kwargs.json")
    assert full.motion.audio_attention_dim == extra["audio_attention_dim"]
    assert full.motion.motion_heads == extra["motion_module_kwargs"]["num_attention_heads"]
    assert (
        full.motion.motion_pe_max_len
        == extra["motion_module_kwargs"]["temporal_position_encoding_max_len"]
    )
    cf = load("codeformer_kwargs.json")
    assert (
        full.codeformer.dim_embd,
        full.codeformer.n_head,
        full.codeformer.n_layers,
        full.codeformer.codebook_size,
    ) == (cf["dim_embd"], cf["n_head"], cf["n_layers"], cf["codebook_size"])
    assert list(full.codeformer.connect_list) == cf["connect_list"]


# docs/model.md §2.1, counted from the official classes on the meta device.
PARAMS = {
    "vae_encoder": 34_163_664,
    "vae_decoder": 49_490_199,
    "reference_unet": 859_508_800,
    "denoiser": 1_525_528_324,
    "face_locator": 514_896,
    "image_proj": 1_577_472,
    "audio_proj": 36_465_152,
    "face_restorer": 113_037_763,
    "bg_upsampler": 16_703_171,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_full_parameter_counts_match_the_official_classes(name):
    with torch.device("meta"):
        module = build_module(name, full_config())
    assert sum(p.numel() for p in module.parameters()) == PARAMS[name]


def test_wav2vec_parameters_are_the_release_minus_head_and_mask_embedding():
    with torch.device("meta"):
        module = build_module("audio_encoder", full_config())
    # 94,371,712 (Wav2Vec2Model) - 768 (masked_spec_embed) - 128 (weight_g folded into weight)
    assert sum(p.numel() for p in module.parameters()) == 94_371_712 - 768 - 128


def test_denoiser_hooks_sixteen_blocks_in_the_official_pairing():
    with torch.device("meta"):
        ref = build_module("reference_unet", full_config())
        den = build_module("denoiser", full_config())
    assert ref.hooked_blocks == den.hooked_blocks
    assert len(ref.hooked_blocks) == 16
    shapes = ref.hooked_shapes((64, 64))
    # docs/model.md §2.3: 5 x (4096, 320), 5 x (1024, 640), 5 x (256, 1280), 1 x (64, 1280)
    assert sorted(shapes) == sorted(
        [(4096, 320)] * 5 + [(1024, 640)] * 5 + [(256, 1280)] * 5 + [(64, 1280)]
    )


def test_full_sr_configs_are_the_official_constants():
    assert CodeFormerConfig().channels == {
        "512": 64,
        "256": 128,
        "128": 128,
        "64": 256,
        "32": 256,
        "16": 512,
    }
    assert RRDBConfig() == RRDBConfig(scale=2, num_feat=64, num_block=23, num_grow_ch=32)
    assert HeadsConfig().audio_window * HeadsConfig().audio_blocks * 768 == 46080
