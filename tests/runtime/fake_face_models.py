"""Stand-ins for the official SCRFD / ArcFace / MDX-Net ONNX files, with the same I/O layout.

The detector ignores its input's content and reports chosen anchors; the recogniser is a fixed
random linear map of the crop. They test our decoding, NMS, alignment and preprocessing, not
face detection quality.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

STRIDES = (8, 16, 32)


class FakeSCRFD(nn.Module):
    """faces: [(stride, row, col, anchor, score, (l, t, r, b), kps10)] in stride units."""

    def __init__(self, faces):
        super().__init__()
        for s in STRIDES:
            n = (640 // s) ** 2 * 2
            score = torch.full((n, 1), 0.1)
            box = torch.ones(n, 4)
            kps = torch.zeros(n, 10)
            for stride, row, col, anchor, sc, dist, k in faces:
                if stride == s:
                    i = (row * (640 // s) + col) * 2 + anchor
                    score[i, 0], box[i], kps[i] = sc, torch.tensor(dist), torch.tensor(k)
            self.register_buffer(f"score{s}", score)
            self.register_buffer(f"box{s}", box)
            self.register_buffer(f"kps{s}", kps)

    def forward(self, x):
        zero = x.mean() * 0  # keep the graph input-dependent
        outs = [
            getattr(self, f"{kind}{s}") + zero for kind in ("score", "box", "kps") for s in STRIDES
        ]
        return tuple(outs)


class FakeArcFace(nn.Module):
    def __init__(self, dim: int = 512):
        super().__init__()
        self.proj = nn.Linear(3 * 16 * 16, dim)

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 16).flatten(1))


def export(module: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.zeros(shape),),
            str(path),
            dynamo=False,
            input_names=["input.1"],
            opset_version=17,
        )


def write_face_models(models_dir: Path, faces, dim: int = 512) -> FakeArcFace:
    export(FakeSCRFD(faces), (1, 3, 640, 640), models_dir / "scrfd_10g_bnkps.onnx")
    torch.manual_seed(0)
    arc = FakeArcFace(dim)
    export(arc, (1, 3, 112, 112), models_dir / "glintr100.onnx")
    return arc


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def write_mdx_model(
    root: Path, factor: float = 1.0, n_fft: int = 2048, dim_f: int = 512, dim_t_log2: int = 5
) -> None:
    """``audio_separator/Kim_Vocal_2.onnx`` returning ``factor`` x its input spectrogram, and the
    ``mdx_model_data.json`` entry audio-separator would find for it (by file hash)."""
    import json

    from hallo2rt.runtime.vocals import model_hash

    sep = root / "audio_separator"
    sep.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Scale(factor),
            (torch.zeros(1, 4, dim_f, 2**dim_t_log2),),
            str(sep / "Kim_Vocal_2.onnx"),
            input_names=["input"],
            dynamo=False,
        )
    entry = {
        "compensate": 1.009,
        "mdx_dim_f_set": dim_f,
        "mdx_dim_t_set": dim_t_log2,
        "mdx_n_fft_scale_set": n_fft,
        "primary_stem": "Vocals",
    }
    (sep / "mdx_model_data.json").write_text(
        json.dumps({model_hash(sep / "Kim_Vocal_2.onnx"): entry})
    )
