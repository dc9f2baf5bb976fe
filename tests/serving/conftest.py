"""Shared pieces of the serving tests: a server config over the tiny checkpoint tree (PyTorch
engines at 64 px, one thread per replica) and the request files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hallo2rt.demo import ASSETS, DEMO_FACE_BOX

pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")


def write_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    """A 220 Hz tone, 16-bit mono PCM (the stdlib's wave module)."""
    import wave

    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


@pytest.fixture(scope="session")
def request_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("request")
    np.save(folder / "emb.npy", np.random.default_rng(1).standard_normal(64).astype(np.float32))
    write_wav(folder / "short.wav", 0.4)  # 10 frames: one clip
    write_wav(folder / "two.wav", 0.8)  # 20 frames: 2 clips, 2 SR windows
    write_wav(folder / "long.wav", 2.0)  # 50 frames: 4 clips
    (folder / "text.txt").write_text("not media\n")
    return {
        "image": ASSETS / "portrait.jpg",
        "audio": folder / "short.wav",
        "two": folder / "two.wav",
        "long": folder / "long.wav",
        "face_embedding": folder / "emb.npy",
        "text": folder / "text.txt",
    }


FACE = {"face_box": DEMO_FACE_BOX}


def serve_config(tiny_root: Path, results: Path, **kw):
    from hallo2rt.serve.jobs import ServeConfig

    return ServeConfig(checkpoints=tiny_root, size=64, results=results, threads=1, **kw)
