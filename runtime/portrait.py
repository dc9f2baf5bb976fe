"""The source portrait: pixels, the face region and the three mask pyramids (docs/model.md §1.2).

The official code takes the face and lip rectangles from mediapipe landmarks; here they come
from a face box (and optionally a lip box) given by the caller. From the rectangles on, the
masks follow the official ``get_mask`` recipe: face rectangle expanded by ``face_expand_ratio``,
lip rectangle by 2.0, each resized to 64x64, Gaussian-blurred (51 / 31 px kernels), min-max
normalised to 0..255, background = 255 - face, face = face - lip (saturating), then resized
to the four latent resolutions. Differences from the official code: the resizes use torch's
bilinear filters rather than OpenCV/PIL (sub-1/255 differences at the mask edges), and without a
lip box the lips are placed at a fixed position in the face box (``default_lip_box``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engines.errors import OptionError
from .geometry import gaussian_blur_2d
from .media import MediaError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in source-image pixels
LIP_EXPAND = 2.0  # official get_lip_mask default (the config does not change it)
FACE_BLUR, LIP_BLUR = 51, 31  # official GaussianBlur kernel sizes at 64x64


@dataclass(frozen=True)
class Portrait:
    """Everything the pipeline needs from the source image (CPU tensors)."""

    pixels: torch.Tensor  # (1, 3, S, S) in [-1, 1], the resized portrait
    face_region: torch.Tensor  # (1, 3, S, S) in {0, 1}: the hard (expanded) face rectangle
    full_masks: list[torch.Tensor]  # per latent level (1, L): background ("pose") weight
    face_masks: list[torch.Tensor]  # per latent level (1, L): face minus lips
    lip_masks: list[torch.Tensor]  # per latent level (1, L): lips
    embedding: torch.Tensor  # (1, 512) raw ArcFace embedding (not normalised)


def load_image(path: str | Path) -> np.ndarray:
    """Any common image -> (H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"image file {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError(
            f"{path} could not be read as an image ({exc}); use a JPEG, PNG or WebP portrait"
        ) from exc


def resize_image(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, size, size) in [-1, 1]; aspect ratio ignored, antialiased
    bilinear, as the official ``Resize((512, 512))``."""
    from PIL import Image

    im = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0
    return (x * 2 - 1)[None]


def expand_box(box: Box, ratio: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Scale a box about its centre by ``ratio`` and clip it to the image (official
    ``expand_region``)."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * ratio, (y1 - y0) * ratio
    return (
        max(0, int(cx - w / 2)),
        max(0, int(cy - h / 2)),
        min(width, int(cx + w / 2)),
        min(height, int(cy + h / 2)),
    )


def default_lip_box(face: Box) -> Box:
    """Where the lips sit in a face box when no landmarks are available (an approximation)."""
    x0, y0, x1, y1 = face
    w, h = x1 - x0, y1 - y0
    return (x0 + 0.3 * w, y0 + 0.72 * h, x0 + 0.7 * w, y0 + 0.88 * h)


def _rect_mask(box: tuple[int, int, int, int], width: int, height: int) -> torch.Tensor:
    m = torch.zeros(height, width)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1.0
    return m


def _blurred(mask: torch.Tensor, ksize: int) -> torch.Tensor:
    """Hard mask (H, W) -> 64x64 -> blur -> min-max to 0..255 (uint8 values, as the PNGs)."""
    m = F.interpolate(mask[None, None], size=(64, 64), mode="bilinear", align_corners=False)
    m = gaussian_blur_2d(m[0, 0] * 255.0, ksize)
    lo, hi = m.min(), m.max()
    m = (m - lo) / (hi - lo).clamp(min=1e-6) * 255.0
    return m.round().clamp(0, 255)


def _pyramid(mask255: torch.Tensor, latent: int, levels: int = 4) -> list[torch.Tensor]:
    """64x64 mask in 0..255 -> [(1, (latent >> i)^2) in 0..1 for each level]."""
    out = []
    for i in range(levels):
        side = latent >> i
        m = F.interpolate(
            mask255[None, None] / 255.0,
            size=(side, side),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        out.append(m.reshape(1, -1))
    return out


def build_portrait(
    rgb: np.ndarray,
    size: int,
    face_box: Box,
    embedding: np.ndarray,
    lip_box: Box | None = None,
    face_expand_ratio: float = 1.2,
) -> Portrait:
    """Pixels, face region and mask pyramids from an RGB image and its face (and lip) box."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = face_box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise MediaError(
            f"face box {face_box} is not inside the {width}x{height} image "
            "(expected x0,y0,x1,y1 in pixels with x0 < x1 and y0 < y1)"
        )
    if size % 64:
        raise OptionError(f"size {size} must be a multiple of 64 (latent / 8 at the deepest level)")
    emb = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
    face = expand_box(face_box, face_expand_ratio, width, height)
    lips = expand_box(lip_box or default_lip_box(face_box), LIP_EXPAND, width, height)
    face_hard = _rect_mask(face, width, height)
    face_blur = _blurred(face_hard, FACE_BLUR)
    lip_blur = _blurred(_rect_mask(lips, width, height), LIP_BLUR)
    background = 255.0 - face_blur
    face_only = (face_blur - lip_blur).clamp(min=0)  # cv2.subtract saturates at 0
    region = F.interpolate(face_hard[None, None], size=(size, size), mode="nearest")
    latent = size // 8
    return Portrait(
        pixels=resize_image(rgb, size),
        face_region=region.expand(1, 3, size, size).contiguous(),
        full_masks=_pyramid(background, latent),
        face_masks=_pyramid(face_only, latent),
        lip_masks=_pyramid(lip_blur, latent),
        embedding=torch.tensor(emb),  # a copy: a server's job hands a read-only array
    )


def load_embedding(path: str | Path) -> np.ndarray:
    """A face embedding saved with ``numpy.save`` ((E,) or (1, E) finite floats)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"face embedding file {path} does not exist")
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MediaError(f"{path} is not a .npy array ({exc})") from exc
    if emb.ndim > 2 or (emb.ndim == 2 and emb.shape[0] != 1) or not np.isfinite(emb).all():
        raise MediaError(
            f"{path} holds an array of shape {emb.shape}; expected one vector of "
            "finite floats (the raw ArcFace embedding: 512 values for the released model)"
        )
    return emb.reshape(-1).astype(np.float32)


def parse_box(text: str) -> Box:
    """'x0,y0,x1,y1' -> box."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise MediaError(f"box {text!r} must be four numbers x0,y0,x1,y1") from exc
    if len(vals) != 4:
        raise MediaError(f"box {text!r} must be four numbers x0,y0,x1,y1")
    return vals
