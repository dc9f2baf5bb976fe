"""``--separate-vocals``: the official MDX-Net vocal separation
(``audio_separator/Kim_Vocal_2.onnx`` through onnxruntime) with our own STFT chunking, as
audio-separator runs it (docs/model.md §1.3).

At 44.1 kHz stereo: overlapping chunks of ``hop * (dim_t - 1)`` samples (25% overlap, Hann
cross-fade), each turned into a (1, 4, dim_f, dim_t) spectrogram [L re, L im, R re, R im] with the
three lowest bins zeroed, passed through the model, inverted, overlap-added and normalised; the
result is peak-limited to 0.9. The model's n_fft, dim_f, dim_t come from ``mdx_model_data.json``
by the hash of the model file, as audio-separator looks them up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engines.errors import SetupError
from ..engines.ort_backend import session_options
from .media import MediaError

MODEL = "audio_separator/Kim_Vocal_2.onnx"
MODEL_DATA = "audio_separator/mdx_model_data.json"
SAMPLE_RATE = 44100  # MDX models run at 44.1 kHz stereo
HOP = 1024
OVERLAP = 0.25
MAX_PEAK = 0.9


@dataclass(frozen=True)
class MDXParams:
    n_fft: int  # mdx_n_fft_scale_set
    dim_f: int  # frequency bins the model sees
    dim_t: int  # frames per chunk (2 ** mdx_dim_t_set)
    hop: int = HOP

    @property
    def chunk(self) -> int:
        return self.hop * (self.dim_t - 1)

    @property
    def trim(self) -> int:
        return self.n_fft // 2


def model_hash(path: Path) -> str:
    """audio-separator's key: md5 of the last 10,000 KiB of the file (all of a smaller file)."""
    with open(path, "rb") as f:
        try:
            f.seek(-10000 * 1024, 2)
        except OSError:
            f.seek(0)
        return hashlib.md5(f.read()).hexdigest()


def mdx_params(model: Path, data: Path) -> MDXParams:
    for p, what in ((model, "the MDX-Net vocal model"), (data, "audio-separator's MDX table")):
        if not p.is_file():
            raise MediaError(f"--separate-vocals needs {p} ({what}, from the Hallo2 release)")
    table = json.loads(data.read_text())
    entry = table.get(model_hash(model))
    if entry is None:
        raise MediaError(f"{model} is not listed in {data} (by its hash): unknown MDX model")
    return MDXParams(
        n_fft=int(entry["mdx_n_fft_scale_set"]),
        dim_f=int(entry["mdx_dim_f_set"]),
        dim_t=2 ** int(entry["mdx_dim_t_set"]),
    )


def _stft(x: torch.Tensor, p: MDXParams) -> torch.Tensor:
    """(2, n) -> (1, 4, dim_f, frames): [L re, L im, R re, R im]."""
    window = torch.hann_window(p.n_fft, periodic=True)
    spec = torch.view_as_real(
        torch.stft(x, p.n_fft, p.hop, window=window, center=True, return_complex=True)
    )  # (2, bins, frames, 2)
    spec = spec.permute(0, 3, 1, 2).reshape(1, 4, -1, spec.shape[2])
    return spec[:, :, : p.dim_f]


def _istft(spec: torch.Tensor, p: MDXParams) -> torch.Tensor:
    """(1, 4, dim_f, frames) -> (2, n); the bins above dim_f are zero."""
    bins = p.n_fft // 2 + 1
    spec = torch.cat([spec, spec.new_zeros(1, 4, bins - spec.shape[2], spec.shape[3])], dim=2)
    spec = spec.reshape(2, 2, bins, -1).permute(0, 2, 3, 1)  # (2, bins, frames, re/im)
    window = torch.hann_window(p.n_fft, periodic=True)
    return torch.istft(
        torch.complex(spec[..., 0], spec[..., 1]), p.n_fft, p.hop, window=window, center=True
    )


def demix(mix: np.ndarray, run, p: MDXParams) -> np.ndarray:
    """(2, n) float32 at 44.1 kHz -> the model's stem (2, n). ``run(spec) -> spec`` (numpy)."""
    n = mix.shape[1]
    gen = p.chunk - 2 * p.trim
    mixture = np.concatenate(
        [np.zeros((2, p.trim), np.float32), mix, np.zeros((2, gen + p.trim - n % gen), np.float32)],
        axis=1,
    )
    step = int((1 - OVERLAP) * p.chunk)
    result = np.zeros_like(mixture)
    divider = np.zeros_like(mixture)
    for start in range(0, mixture.shape[1], step):
        end = min(start + p.chunk, mixture.shape[1])
        part = np.zeros((2, p.chunk), np.float32)
        part[:, : end - start] = mixture[:, start:end]
        spec = _stft(torch.from_numpy(part), p)
        spec[:, :, :3] = 0  # audio-separator zeroes the lowest bins
        out = _istft(torch.from_numpy(np.asarray(run(spec.numpy()), np.float32)), p).numpy()
        window = np.hanning(end - start)[None].astype(np.float32)
        result[:, start:end] += out[:, : end - start] * window
        divider[:, start:end] += window
    source = (result / (divider + 1e-8))[:, p.trim : -p.trim][:, :n]
    peak = np.abs(source).max()
    return source * (MAX_PEAK / peak) if peak > MAX_PEAK else source


def separate_vocals(
    wave: np.ndarray, checkpoints: str | Path, providers: list[str] | None = None
) -> np.ndarray:
    """Stereo 44.1 kHz (2, n) -> the vocals (2, n) with the release's Kim_Vocal_2 model."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SetupError("--separate-vocals needs onnxruntime: pip install onnxruntime") from exc
    root = Path(checkpoints)
    params = mdx_params(root / MODEL, root / MODEL_DATA)
    session = ort.InferenceSession(
        str(root / MODEL), session_options(ort), providers=providers or ["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return demix(wave, lambda spec: session.run(None, {name: spec})[0], params)
