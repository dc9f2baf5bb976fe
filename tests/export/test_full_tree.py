"""Full-size random tree written, loaded and run (slow: ~12 GB on disk, ~13 GB RSS, ~2 min).

Not in the default run (``-m 'not slow'``); run with ``python -m pytest -m slow``.
"""

from __future__ import annotations

import pytest
import torch

from hallo2rt.export import load_pretrained
from hallo2rt.export.modules import reference_tokens_official, split_reference_bank
from hallo2rt.random_weights import full_config, make_random_pretrained


@pytest.mark.slow
def test_full_random_tree_loads_and_runs(tmp_path):
    make_random_pretrained(tmp_path, "full", seed=0, include_unused=False)
    p = load_pretrained(tmp_path)
    assert p.config == full_config()
    f = 2
    with torch.no_grad():
        lat = p["vae_encoder"](torch.rand(3, 3, 64, 64) * 2 - 1)
        tok = torch.cat(
            [p["image_proj"](torch.zeros(1, 512)), p["image_proj"](torch.randn(1, 512))]
        )
        bank = p["reference_unet"](
            lat.repeat(2, 1, 1, 1), torch.tensor(0), reference_tokens_official(tok)
        )
        refs, mots = zip(*[split_reference_bank(b) for b in bank], strict=True)
        aud = p["audio_proj"](torch.randn(1, f, 5, 12, 768))
        face = p["face_locator"](torch.rand(1, 3, 64, 64))
        masks = [torch.rand(1, (8 >> i) ** 2) for i in range(4)]
        v = p["denoiser"](
            torch.randn(2, 4, f, 8, 8),
            torch.tensor(999),
            tok,
            torch.cat([torch.zeros_like(aud), aud]),
            torch.cat([torch.zeros_like(face), face])[:, :, None],
            p["denoiser"].reference_kv(refs),
            mots,
            masks,
            masks,
            masks,
            torch.tensor([1.0, 1.0, 1.0]),
        )
        assert v.shape == (2, 4, f, 8, 8) and torch.isfinite(v).all()
        assert p["audio_encoder"](torch.randn(1, 16000), 25).shape == (1, 25, 12, 768)
