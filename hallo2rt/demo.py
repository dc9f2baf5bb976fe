"""The demo: the tiny random model, the bundled portrait and speech, and the run that ties them
together (``hallo2rt demo``). The benchmarks and tests use the same assets and face boxes."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .engines.paths import output_folder

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
PORTRAIT = ASSETS / "portrait.jpg"  # a public-domain NASA photo (assets/README.md)
SPEECH = ASSETS / "speech.wav"  # 2.9 s of speech
DEMO_FACE_BOX = "180,78,262,182"  # the portrait's face, read off by hand
DEMO_LIP_BOX = "203,136,250,156"
DEMO_SIZE = 64  # the tiny model's side


def cache_dir() -> Path:
    """Where the tiny demo model is kept between runs ($XDG_CACHE_HOME/hallo2rt)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hallo2rt"


def demo_model(cache: Path) -> Path:
    """The tiny random tree, written once into ``cache`` (atomically) and reused."""
    from .random_weights import make_random_pretrained

    root = cache / "demo-tiny-v3"  # bump when tiny_config() changes
    if (root / "hallo2/net.pth").is_file():
        return root
    with output_folder(cache, "--cache"):  # a file, or unwritable: one line before any work
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=cache))
        try:
            make_random_pretrained(tmp, "tiny", seed=0, include_unused=False)
            tmp.replace(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote the tiny random demo model to %s", root)
    return root


def run_demo(
    out: Path,
    cache: Path,
    cfg,
    device: str = "cpu",
    fp16: bool = False,
    progress: Callable | None = None,
) -> Path:
    """The bundled portrait animated by the bundled speech on the tiny random model, to ``out``
    (``cfg``: a ``runtime.pipeline.RunConfig`` of size ``DEMO_SIZE``)."""
    from .assemble import load_torch_session
    from .runtime.media import check_output

    check_output(out)  # before the model is written or loaded
    root = demo_model(cache)
    steps = cfg.sampling.plan()
    session = load_torch_session(root, device, fp16, DEMO_SIZE, cfg.frames, steps=steps)
    with session:
        return demo_video(session, out, cfg, progress)


def demo_video(session, out: Path, cfg, progress: Callable | None = None) -> Path:
    """The demo's inputs (portrait, speech, face and lip boxes, a seeded embedding) through
    ``generate_video`` on an open ``session``."""
    from .runtime.pipeline import generate_video
    from .runtime.portrait import parse_box

    return generate_video(
        session,
        PORTRAIT,
        SPEECH,
        out,
        parse_box(DEMO_FACE_BOX),
        np.random.default_rng(0).standard_normal(session.embedding_dim),
        cfg,
        lip_box=parse_box(DEMO_LIP_BOX),
        progress=progress,
    )
