"""Face box, 5 keypoints and the ArcFace embedding from the official ``face_analysis/models/``
ONNX files (SCRFD-10G detector, glintr100 recogniser) through onnxruntime, without insightface
(docs/model.md §1.2): our own anchor decoding, NMS, similarity alignment and warp.

As the official code: detection at 640x640 (aspect kept, padded bottom-right), score threshold
0.5, NMS 0.4, the largest face by box area, the *raw* (un-normalised) 512-d embedding of the
112x112 crop aligned to the ArcFace template. Images are RGB here; the models get the channel
order insightface feeds them (``blobFromImage(..., swapRB=True)`` on BGR = RGB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engines.errors import SetupError
from ..engines.ort_backend import session_options
from .geometry import umeyama_similarity, warp_affine_image
from .media import MediaError

DETECTOR = "scrfd_10g_bnkps.onnx"
RECOGNISER = "glintr100.onnx"
DET_SIZE = 640
STRIDES = (8, 16, 32)
ANCHORS = 2  # per location
SCORE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.4
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in source pixels
    score: float
    keypoints: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth, right mouth


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize INTER_LINEAR equivalent (half-pixel centres, no antialias); float32 HWC."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


def letterbox(rgb: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into the top-left of a size x size canvas -> (canvas,
    scale); the detector's input."""
    h, w = rgb.shape[:2]
    if h / w > 1.0:
        nh, nw = size, int(size / (h / w))
    else:
        nw, nh = size, int(size * (h / w))
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[:nh, :nw] = _resize(rgb, nw, nh)
    return canvas, nh / h


def anchor_centers(size: int, stride: int, anchors: int = ANCHORS) -> np.ndarray:
    """(H*W*anchors, 2) x, y of every anchor, row-major, anchors of a location adjacent."""
    n = size // stride
    ys, xs = np.mgrid[:n, :n]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, anchors, axis=0)


def decode(
    outputs: list[np.ndarray],
    det_scale: float,
    size: int = DET_SIZE,
    threshold: float = SCORE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SCRFD outputs [scores x3, boxes x3, keypoints x3] -> (scores, boxes, kps) in source pixels.

    Box and keypoint predictions are distances in units of the stride from the anchor centre.
    """
    outs = [o[0] if o.ndim == 3 else o for o in outputs]  # batched exports carry a batch axis
    n = len(STRIDES)
    scores, boxes, kps = [], [], []
    for i, stride in enumerate(STRIDES):
        s = outs[i].reshape(-1)
        d = outs[i + n].reshape(-1, 4) * stride
        k = outs[i + 2 * n].reshape(-1, 10) * stride
        c = anchor_centers(size, stride)
        keep = s >= threshold
        scores.append(s[keep])
        boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1)[keep])
        kps.append((np.tile(c, 5) + k)[keep].reshape(-1, 5, 2))
    return (
        np.concatenate(scores),
        np.concatenate(boxes) / det_scale,
        np.concatenate(kps) / det_scale,
    )


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Greedy NMS (insightface's, with its +1 pixel area convention); indices by score."""
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, xx1 - xx0 + 1) * np.maximum(0, yy1 - yy0 + 1)
        iou = inter / (area[i] + area[rest] - inter)
        order = rest[iou <= threshold]
    return keep


class FaceAnalyzer:
    """SCRFD + ArcFace sessions (CPU provider unless told otherwise)."""

    def __init__(self, models_dir: str | Path, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise SetupError(
                "face analysis needs onnxruntime: pip install onnxruntime (or "
                "pass --face-box and --face-embedding)"
            ) from exc
        models_dir = Path(models_dir)
        paths = [models_dir / DETECTOR, models_dir / RECOGNISER]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise MediaError(
                "face analysis models missing: " + ", ".join(missing) + " (the "
                "official face_analysis/models/ files; or pass --face-box and "
                "--face-embedding)"
            )
        opts = session_options(ort)
        prov = providers or ["CPUExecutionProvider"]
        self.detector = ort.InferenceSession(str(paths[0]), opts, providers=prov)
        self.recogniser = ort.InferenceSession(str(paths[1]), opts, providers=prov)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces, best score first."""
        canvas, scale = letterbox(rgb)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)
        name = self.detector.get_inputs()[0].name
        outs = self.detector.run(None, {name: blob})
        scores, boxes, kps = decode(outs, scale)
        return [Face(boxes[i], float(scores[i]), kps[i]) for i in nms(boxes, scores)]

    def largest(self, rgb: np.ndarray) -> Face:
        faces = self.detect(rgb)
        if not faces:
            raise MediaError(
                "no face found in the portrait: use a photo with one clearly "
                "visible, frontal face (or pass --face-box and --face-embedding)"
            )
        return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The raw 512-d ArcFace embedding of the face aligned to the 112x112 template."""
        crop = warp_affine_image(rgb, umeyama_similarity(face.keypoints, ARCFACE_TEMPLATE), 112)
        blob = ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None].astype(np.float32)
        name = self.recogniser.get_inputs()[0].name
        return self.recogniser.run(None, {name: blob})[0].reshape(-1)


def lip_box_from_keypoints(face: Face) -> tuple[float, float, float, float]:
    """Lip rectangle from the two mouth-corner keypoints (no landmark model): the corners span
    its width; its height is a third of that, centred on them."""
    (lx, ly), (rx, ry) = face.keypoints[3], face.keypoints[4]
    half_h = abs(rx - lx) / 6 + 1
    cy = (ly + ry) / 2
    return (min(lx, rx), cy - half_h, max(lx, rx), cy + half_h)


def analyze_portrait(
    rgb: np.ndarray, models_dir: str | Path, providers: list[str] | None = None
) -> tuple[tuple[float, ...], np.ndarray, tuple[float, ...]]:
    """(face box, raw embedding, lip box) of the largest face, as the official pipeline picks it.

    The official masks come from mediapipe landmarks; here the face rectangle is SCRFD's box
    and the lips are placed from the mouth-corner keypoints (``lip_box_from_keypoints``).
    """
    analyzer = FaceAnalyzer(models_dir, providers)
    face = analyzer.largest(rgb)
    box = tuple(float(v) for v in face.box)
    return box, analyzer.embed(rgb, face), lip_box_from_keypoints(face)
