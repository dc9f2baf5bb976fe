"""Shared fixtures: one tiny random official-layout tree per test session (seconds to write)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hallo2rt.export import load_pretrained
from hallo2rt.export.random_weights import make_random_pretrained

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
