"""Config checks name the field and the value."""

from __future__ import annotations

import pytest

from hallo2rt.export.config import (
    CodeFormerConfig,
    ConfigError,
    HeadsConfig,
    RRDBConfig,
    UNetConfig,
    Wav2Vec2Config,
)


def test_unet_width_not_divisible_by_groups():
    with pytest.raises(ConfigError, match=r"UNetConfig.block_out_channels = 48: .*norm_num_groups"):
        UNetConfig(block_out_channels=(48, 64, 64, 64))


def test_unet_per_level_head_counts_are_refused():
    cfg = UNetConfig().to_json() | {"attention_head_dim": [5, 10, 20, 20]}
    with pytest.raises(ConfigError, match="attention_head_dim"):
        UNetConfig.from_json(cfg)


def test_wav2vec_stable_layer_norm_is_refused():
    cfg = Wav2Vec2Config().to_json() | {"do_stable_layer_norm": True}
    with pytest.raises(ConfigError, match="do_stable_layer_norm"):
        Wav2Vec2Config.from_json(cfg)


def test_codeformer_fuse_at_the_bottom_is_refused():
    with pytest.raises(ConfigError, match="connect_list"):
        CodeFormerConfig(connect_list=("16", "32"))


def test_rrdb_input_channels_reveal_the_scale():
    import torch

    sd = {"conv_first.weight": torch.empty(64, 5, 3, 3)}
    with pytest.raises(ConfigError, match="5 input channels"):
        RRDBConfig.from_state_dict(sd)


def test_audio_proj_width_must_fit_the_wav2vec_config():
    import torch

    sd = {
        "face_locator.conv_in.weight": torch.empty(16, 3, 3, 3),
        "face_locator.blocks.0.weight": torch.empty(16, 16, 3, 3),
        "face_locator.blocks.1.weight": torch.empty(32, 16, 3, 3),
        "face_locator.conv_out.weight": torch.empty(320, 32, 3, 3),
        "imageproj.proj.weight": torch.empty(3072, 512),
        "imageproj.norm.weight": torch.empty(768),
        "audioproj.proj1.weight": torch.empty(512, 46080),
        "audioproj.proj3.weight": torch.empty(24576, 512),
    }
    assert HeadsConfig.from_state_dict(sd, 12, 768).audio_window == 5
    with pytest.raises(ConfigError, match="do not belong together"):
        HeadsConfig.from_state_dict(sd, 7, 768)
