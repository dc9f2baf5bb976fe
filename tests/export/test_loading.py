"""load_pretrained on tiny random trees: round trips, strictness, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hallo2rt.export import CheckpointError, ConfigError, load_pretrained
from hallo2rt.export.checkpoints import (
    GENERATION_COMPONENTS,
    NET,
    NET_G,
    REALESRGAN,
    fold_weight_norm,
    read_state_dict,
)
from hallo2rt.random_weights import make_random_pretrained, tiny_config

VAE_FILE = "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"
W2V_FILE = "wav2vec/wav2vec2-base-960h/model.safetensors"


@pytest.fixture
def tree(tmp_path, tiny_root):
    """A private copy of the tiny tree that a test may damage."""
    root = tmp_path / "pretrained_models"
    shutil.copytree(tiny_root, root)
    return root


def test_round_trip_every_tensor_of_net_pth(tiny, tiny_root):
    net = torch.load(tiny_root / NET, weights_only=True)
    prefixes = {
        "reference_unet": "reference_unet",
        "denoising_unet": "denoiser",
        "face_locator": "face_locator",
        "imageproj": "image_proj",
        "audioproj": "audio_proj",
    }
    for key, value in net.items():
        prefix, rest = key.split(".", 1)
        got = tiny[prefixes[prefix]].state_dict()[rest]
        assert torch.equal(got, value), key


def test_round_trip_vae_wav2vec_and_sr(tiny, tiny_root):
    vae = load_file(tiny_root / VAE_FILE)
    enc, dec = tiny["vae_encoder"].state_dict(), tiny["vae_decoder"].state_dict()
    for key, value in vae.items():
        assert torch.equal((enc if key in enc else dec)[key], value), key
    cf = torch.load(tiny_root / NET_G, weights_only=True)["params_ema"]
    sd = tiny["face_restorer"].state_dict()
    assert set(sd) == set(cf) and all(torch.equal(sd[k], v) for k, v in cf.items())
    esr = torch.load(tiny_root / REALESRGAN, weights_only=True)["params_ema"]
    assert all(torch.equal(tiny["bg_upsampler"].state_dict()[k], v) for k, v in esr.items())


def test_config_comes_from_the_files(tiny):
    cfg = tiny.config
    assert cfg == tiny_config()  # every dim read back from config.json files and tensor shapes


def test_wav2vec_weight_norm_is_folded(tiny, tiny_root):
    raw = load_file(tiny_root / W2V_FILE)
    g = raw["wav2vec2.encoder.pos_conv_embed.conv.weight_g"]
    v = raw["wav2vec2.encoder.pos_conv_embed.conv.weight_v"]
    got = tiny["audio_encoder"].encoder.pos_conv_embed.conv.weight
    assert torch.allclose(got, fold_weight_norm(g, v, dim=2))
    # independent check: torch's own weight norm gives the same weight
    conv = torch.nn.Conv1d(v.shape[0], v.shape[0], v.shape[2], groups=v.shape[0] // v.shape[1])
    conv = torch.nn.utils.parametrizations.weight_norm(conv, dim=2)
    conv.parametrizations.weight.original0.data = g
    conv.parametrizations.weight.original1.data = v
    assert torch.allclose(conv.weight, got, atol=1e-6)
    assert not any(k.startswith("lm_head") for k in tiny["audio_encoder"].state_dict())


def test_current_and_legacy_vae_names_load_the_same(tree, tiny):
    legacy_names = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    sd = {}
    for key, value in load_file(tree / VAE_FILE).items():
        for new, old in legacy_names.items():
            key = key.replace(new, old)
        sd[key] = value
    assert sum(".query." in k for k in sd) == 4  # encoder + decoder, weight + bias
    save_file(sd, tree / VAE_FILE)
    legacy = load_pretrained(tree, ["vae_encoder", "vae_decoder"])
    for name in ("vae_encoder", "vae_decoder"):
        a, b = legacy[name].state_dict(), tiny[name].state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_full_trees_use_the_released_legacy_vae_names(tmp_path):
    # "full" is written with the released names; tiny with current ones (both paths exercised)
    from hallo2rt.random_weights import full_config, official_layout

    vae = next(s for s in official_layout(full_config()) if s.path == VAE_FILE)
    assert "encoder.mid_block.attentions.0.query.weight" in vae.shapes


def test_torch_parametrized_weight_norm_names_are_accepted(tree):
    sd = load_file(tree / W2V_FILE)
    base = "wav2vec2.encoder.pos_conv_embed.conv."
    sd[base + "parametrizations.weight.original0"] = sd.pop(base + "weight_g")
    sd[base + "parametrizations.weight.original1"] = sd.pop(base + "weight_v")
    save_file(sd, tree / W2V_FILE)
    load_pretrained(tree, ["audio_encoder"])


def test_bin_and_pth_formats_load(tree):
    vae = load_file(tree / VAE_FILE)
    (tree / VAE_FILE).unlink()
    torch.save(vae, tree / "sd-vae-ft-mse/diffusion_pytorch_model.bin")
    assert load_pretrained(tree, ["vae_decoder"]).files["vae_decoder"].endswith(".bin")


def test_params_key_is_accepted_when_params_ema_is_absent(tree):
    sd = torch.load(tree / REALESRGAN, weights_only=True)["params_ema"]
    torch.save({"params": sd}, tree / REALESRGAN)
    load_pretrained(tree, ["bg_upsampler"])


def test_missing_files_are_all_reported_before_loading(tree):
    (tree / NET).unlink()
    shutil.rmtree(tree / "sd-vae-ft-mse")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tree, GENERATION_COMPONENTS)
    msg = str(err.value)
    assert "3 required file(s) missing" in msg
    assert "hallo2/net.pth" in msg and "Hallo2 network" in msg
    assert "sd-vae-ft-mse/config.json" in msg
    assert "sd-vae-ft-mse/diffusion_pytorch_model.safetensors" in msg


def test_a_run_only_needs_its_own_files(tree):
    (tree / NET_G).unlink()
    (tree / REALESRGAN).unlink()
    loaded = load_pretrained(tree, GENERATION_COMPONENTS)  # no SR weights needed without upscaling
    assert set(loaded.modules) == set(GENERATION_COMPONENTS)
    with pytest.raises(CheckpointError, match="net_g.pth"):
        load_pretrained(tree, ["face_restorer"])


def test_missing_root_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")


def test_strict_load_lists_missing_unexpected_and_misshaped_keys(tree):
    net = torch.load(tree / NET, weights_only=True)
    net.pop("denoising_unet.conv_out.weight")
    net["denoising_unet.bogus.weight"] = torch.ones(3)
    w = net["denoising_unet.conv_in.weight"]
    net["denoising_unet.conv_in.weight"] = torch.ones(w.shape[0] + 1, *w.shape[1:])
    torch.save(net, tree / NET)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tree, ["denoiser"])
    msg = str(err.value)
    assert "missing keys: 1 (conv_out.weight)" in msg
    assert "unexpected keys: 1 (bogus.weight)" in msg
    assert "conv_in.weight" in msg and "shape mismatches" in msg
    assert "[denoiser]" in msg


def test_many_missing_keys_are_counted_and_truncated(tree):
    net = torch.load(tree / NET, weights_only=True)
    torch.save({k: v for k, v in net.items() if "up_blocks.3." not in k}, tree / NET)
    with pytest.raises(CheckpointError, match=r"missing keys: \d{3} \(.*, \.\.\.\)"):
        load_pretrained(tree, ["denoiser"])


def test_unknown_prefix_in_net_pth_is_reported(tree):
    net = torch.load(tree / NET, weights_only=True)
    net["controlnet.weight"] = torch.ones(1)
    torch.save(net, tree / NET)
    with pytest.raises(CheckpointError, match="controlnet.weight"):
        load_pretrained(tree, ["image_proj"])


def test_corrupt_file_is_reported_as_corrupt(tree):
    data = (tree / NET).read_bytes()
    (tree / NET).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        load_pretrained(tree, ["image_proj"])


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": torch.ones(1), "obj": ConfigError("not a tensor")}, path)
    with pytest.raises(CheckpointError, match="could not be read"):
        read_state_dict(path)


def test_unsupported_format_is_named(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"0")
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        read_state_dict(path)


def test_unsupported_unet_setting_is_refused(tree):
    path = tree / "stable-diffusion-v1-5/unet/config.json"
    cfg = json.loads(path.read_text())
    cfg["use_linear_projection"] = True
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="use_linear_projection"):
        load_pretrained(tree, ["denoiser"])


def test_config_mismatched_with_weights_fails_clearly(tree):
    path = tree / "stable-diffusion-v1-5/unet/config.json"
    cfg = json.loads(path.read_text())
    cfg["block_out_channels"] = [64, 64, 64, 64]
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_pretrained(tree, ["reference_unet"])


def test_dtype_cast(tiny_root):
    loaded = load_pretrained(tiny_root, ["image_proj"], dtype=torch.float16)
    assert loaded["image_proj"].proj.weight.dtype == torch.float16


def test_random_trees_are_seeded(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for root, seed in ((a, 5), (b, 5), (c, 6)):
        make_random_pretrained(root, "tiny", seed=seed, include_unused=False)
    na, nb, nc = (torch.load(r / NET, weights_only=True) for r in (a, b, c))
    assert all(torch.equal(na[k], nb[k]) for k in na)
    assert not torch.equal(na["imageproj.proj.weight"], nc["imageproj.proj.weight"])
    assert all(v.abs().sum() > 0 for v in na.values())  # never zeros
