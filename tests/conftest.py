"""Shared fixtures: one tiny random official-layout tree per test session (seconds to write)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hallo2rt.export import load_pretrained
from hallo2rt.random_weights import make_random_pretrained

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("HALLO2RT_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrained_models")
    make_random_pretrained(root, "tiny", seed=1234)
    return root


@pytest.fixture(scope="session")
def tiny(tiny_root):
    torch.manual_seed(0)
    return load_pretrained(tiny_root)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(
            f"the released model's key lists are not at {REFERENCE} "
            "(set HALLO2RT_REFERENCE_DIR): full-size layout NOT checked"
        )
    return REFERENCE


# Small engine shapes for the tiny model: 128 px, 4 frames, 2-frame SR windows, 2 s of audio.
TINY_SHAPES_KW = dict(
    size=128, frames=4, sr_frames=4, sr_overlap=2, face_size=64, max_audio_samples=32_000
)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_root, tmp_path_factory):
    """Every engine of the tiny model exported to ONNX (fp32) once per session:
    (directory, manifests). Tests must not modify it; copy what they break."""
    from hallo2rt.export.graphs import GraphShapes
    from hallo2rt.export.onnx import export_engines

    out = tmp_path_factory.mktemp("onnx")
    return out, export_engines(tiny_root, out, None, GraphShapes(**TINY_SHAPES_KW))
