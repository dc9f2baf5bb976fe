"""Streamed high resolution (docs/model.md §2.8): temporal face restoration + background upsampling.

``SuperResolver`` takes frames as they are made and returns upscaled uint8 frames a window at a
time, holding at most one window of input frames and the encoder features of the frames a window
shares with the next, so memory is flat for any length. What the official ``video_sr.py`` does,
and what differs:

- Windows are the official ones (16 frames, 4 shared: [0, 16), [12, 28), ...), but a shared frame
  is encoded, decoded, detected, parsed, upsampled and pasted once: the ``face_restorer`` engine
  takes the shared frames' encoder features as context (exactly the official result, see
  ``CodeFormer.window``). The last window is whatever is left, and no frame is dropped (the
  official drops the last frame of every video).
- Detection: RetinaFace on the frame resized to the engine's side (640; a non-square frame is
  scaled by its long side and padded). The face is the best-scoring detection above 0.8 with the
  eyes >= 5 px apart (the official takes the last one, which is the same for one face). A frame
  without one reuses the previous frame's landmarks (as the official); frames before the first
  detection of the first window use that detection. No face in the whole first window is an error.
- Alignment: a least-squares similarity to the FFHQ 5-point template (the official uses OpenCV's
  LMEDS fit, which agrees for clean landmarks). Warps, erosion, Gaussian blurs and blending are
  tensor ops on the frames' device; nothing is written to disk.
- Resizing after RealESRGAN's x2 is bicubic (the official: OpenCV Lanczos-4). Intermediate images
  stay float (the official rounds to uint8 between stages). The parse mask comes from the
  restored crop directly (the official resizes the upsampled crop back to 512 first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engines.errors import OptionError
from ..engines.manifest import EngineError
from .geometry import (
    erode,
    gaussian_blur,
    invert_affine,
    odd_kernel,
    resize,
    similarity_transform,
    warp_affine,
)
from .media import MediaError, check_output

log = logging.getLogger(__name__)

# facelib's 5-point template of a 512 crop (eyes, nose tip, mouth corners)
TEMPLATE_512 = (
    (192.98138, 239.94708),
    (318.90277, 240.1936),
    (256.63416, 314.01935),
    (201.26117, 371.41043),
    (313.08905, 371.15118),
)
BORDER_RGB = (132.0, 133.0, 135.0)  # warpAffine's gray border, official BGR (135, 133, 132)
# MASK_COLORMAP of the paste-back: which of ParseNet's 19 classes count as face (1) or not (0)
FACE_CLASSES = (0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0)
SCORE_THRESHOLD = 0.8  # facelib's detect_faces conf_threshold
EYE_DISTANCE_MIN = 5.0  # video_sr.py: eye_dist_threshold=5
DETECTOR_MEAN_RGB = (123.0, 117.0, 104.0)  # the detector's mean: padding that becomes zero
SCALES = (1, 2, 4)


class NoFaceError(MediaError):
    """Super-resolution found no face to restore."""


# --- the streamed super-resolver ----------------------------------------------------------------


class SRWindows:
    """Cuts streamed frames (N, 3, H, W) in [-1, 1] into the official SR windows, as [0, 1]
    float32: the first ``window`` frames, then ``window - overlap`` new frames at a time (a
    window's first ``overlap`` frames are the previous window's last, restored once and
    carried as encoder features), and at the end whatever is left."""

    def __init__(self, height: int, width: int, window: int, overlap: int):
        self.height, self.width, self.window, self.overlap = height, width, window, overlap
        self._pending: list[torch.Tensor] = []
        self._first = True

    def _cut(self, pixels: torch.Tensor, device) -> list[torch.Tensor]:
        if tuple(pixels.shape[-2:]) != (self.height, self.width):
            raise OptionError(
                f"frames are {tuple(pixels.shape[-2:])}, the resolver was made for "
                f"{(self.height, self.width)}"
            )
        frames = (pixels.to(device, torch.float32) / 2 + 0.5).clamp(0, 1)
        self._pending.extend(frames.unbind(0))
        out = []
        while len(self._pending) >= self._need():
            n = self._need()
            batch, self._pending = self._pending[:n], self._pending[n:]
            out.append(torch.stack(batch))
            self._first = False
        return out

    def _rest(self) -> torch.Tensor | None:
        if not self._pending:
            return None
        batch, self._pending = self._pending, []
        return torch.stack(batch)

    def _need(self) -> int:
        return self.window if self._first else self.window - self.overlap


class SuperResolver(SRWindows):
    """``push(pixels)`` frames in, upscaled frames out; ``flush()`` after the last frame.

    ``session``: anything with ``run(name, **inputs)`` and ``spec(name)`` holding the four SR
    engines (``runtime.session.Session``). Frames are (N, 3, H, W) in [-1, 1] on any device;
    outputs are (n, H * scale, W * scale, 3) uint8 on the session's device.
    """

    def __init__(
        self,
        session,
        height: int,
        width: int,
        scale: int = 4,
        fidelity: float = 0.5,
    ):
        if scale not in SCALES:
            raise OptionError(f"--upscale {scale}: must be one of {SCALES}")
        if not 0.0 <= fidelity <= 1.0:
            raise OptionError(f"--fidelity {fidelity}: must lie in [0, 1]")
        self.session, self.scale, self.fidelity = session, scale, fidelity
        rest = session.spec("face_restorer")
        names = [t.name for t in rest.inputs]
        if names != ["faces", "context", "context_valid", "fidelity"]:
            raise EngineError(
                f"the face_restorer engine takes {names}, not the streamed window "
                "(faces, context, context_valid, fidelity) of this version: export and build "
                "it again"
            )
        ctx = rest.inputs[1].dims  # (C, emb, 16, 16)
        super().__init__(height, width, rest.profiles["sr_new"][2], int(ctx[0]))
        self.face = int(rest.inputs[0].dims[-1])
        self.detect = int(session.spec("face_detector").inputs[0].dims[-1])
        bg = session.spec("bg_upsampler")
        lo, hi = bg.profiles["height"][0], bg.profiles["height"][2]
        if not (lo <= min(height, width) and max(height, width) <= hi):
            raise MediaError(
                f"the bg_upsampler engine takes images of {lo}..{hi} px; these frames are "
                f"{width}x{height}: export the SR engines with --size {max(height, width)}"
            )
        self.device = session.device
        self._context = torch.zeros(tuple(int(d) for d in ctx), device=self.device)
        self._valid = torch.zeros(self.overlap, device=self.device)
        self._landmarks: torch.Tensor | None = None  # last known (5, 2), frame pixels
        self.frames_out = 0
        self.frames_without_face = 0
        t = torch.tensor(TEMPLATE_512, dtype=torch.float32) * (self.face / 512.0)
        self._template = t.to(self.device)
        self._face_classes = torch.tensor(FACE_CLASSES, dtype=torch.float32, device=self.device)

    # -- streaming --

    def push(self, pixels: torch.Tensor) -> Iterator[torch.Tensor]:
        """Queue frames (N, 3, H, W) in [-1, 1]; yields every window that is now complete."""
        for batch in self._cut(pixels, self.device):
            yield self.run_window(batch)

    def flush(self) -> Iterator[torch.Tensor]:
        """The last, possibly shorter, window."""
        batch = self._rest()
        if batch is not None:
            yield self.run_window(batch)

    def close(self) -> None:
        """Nothing to release (the pipelined resolver stops its thread)."""

    # -- the state a window hands the next (what a restorer in another process is sent) --

    def state(self) -> dict:
        """The carried state as CPU arrays and numbers: the shared frames' encoder features,
        the last landmarks, the counters."""
        return {
            "context": self._context.cpu().numpy(),
            "valid": self._valid.cpu().numpy(),
            "landmarks": None if self._landmarks is None else self._landmarks.cpu().numpy(),
            "frames_out": self.frames_out,
            "frames_without_face": self.frames_without_face,
        }

    def load_state(self, state: dict) -> None:
        def tensor(a):
            return torch.as_tensor(a, device=self.device)

        self._context, self._valid = tensor(state["context"]), tensor(state["valid"])
        marks = state["landmarks"]
        self._landmarks = None if marks is None else tensor(marks)
        self.frames_out = state["frames_out"]
        self.frames_without_face = state["frames_without_face"]

    # -- one window --

    def run_window(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (n, 3, H, W) in [0, 1], new to this window -> (n, sH, sW, 3) uint8."""
        marks = self._find_landmarks(frames)  # (n, 5, 2)
        to_face = similarity_transform(marks, self._template)  # frame -> crop
        border = tuple(c / 255.0 for c in BORDER_RGB)
        crops = warp_affine(frames, to_face, (self.face, self.face), border)
        out = self.session.run(
            "face_restorer",
            faces=crops * 2 - 1,
            context=self._context,
            context_valid=self._valid,
            fidelity=torch.tensor([self.fidelity]),
        )
        restored = out["restored"].float().clone()
        feats = torch.cat([self._context, out["features"].float()])[-self.overlap :]
        valid = torch.cat([self._valid, torch.ones(frames.shape[0], device=self.device)])
        self._context, self._valid = feats.clone(), valid[-self.overlap :].clone()
        result = torch.stack(
            [self._paste(frames[i], restored[i], to_face[i]) for i in range(frames.shape[0])]
        )
        self.frames_out += frames.shape[0]
        return result

    def _find_landmarks(self, frames: torch.Tensor) -> torch.Tensor:
        found: list[torch.Tensor | None] = [self._detect(f) for f in frames]
        if self._landmarks is None and all(f is None for f in found):
            raise NoFaceError(
                f"no face was found in frames 0-{frames.shape[0] - 1}: face restoration needs "
                f"a visible face (RetinaFace score > {SCORE_THRESHOLD}); upscale without "
                "restoration is not offered, check that this is a portrait video"
            )
        first = next(f for f in found if f is not None) if self._landmarks is None else None
        out: list[torch.Tensor] = []
        for f in found:
            if f is None:
                self.frames_without_face += 1
                f = self._landmarks if self._landmarks is not None else first
            assert f is not None  # the first frame with a face precedes any reuse
            self._landmarks = f
            out.append(f)
        return torch.stack(out)

    def _detect(self, frame: torch.Tensor) -> torch.Tensor | None:
        """The best face's 5 landmarks (5, 2) in frame pixels, or None."""
        h, w = frame.shape[-2:]
        s = self.detect / max(h, w)
        rh, rw = round(h * s), round(w * s)
        img = F.interpolate(frame[None], size=(rh, rw), mode="bilinear", align_corners=False)
        if (rh, rw) != (self.detect, self.detect):
            fill = torch.tensor(DETECTOR_MEAN_RGB, device=img.device).reshape(1, 3, 1, 1) / 255
            canvas = fill.expand(1, 3, self.detect, self.detect).clone()
            canvas[..., :rh, :rw] = img
            img = canvas
        out = self.session.run("face_detector", image=img)
        scores = out["scores"][0].float()
        points = out["landmarks"][0].float().reshape(-1, 5, 2) / s
        eyes = (points[:, 0] - points[:, 1]).norm(dim=-1)
        ok = (scores > SCORE_THRESHOLD) & (eyes >= EYE_DISTANCE_MIN)
        if not bool(ok.any()):  # one host sync per frame
            return None
        return points[torch.where(ok, scores, -1.0).argmax()]

    def _upsample(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """RealESRGAN x2 (clamped as RealESRGANer does), then resized to ``size``."""
        up = self.session.run("bg_upsampler", image=image[None])["upscaled"].float()
        return resize(up.clamp(0, 1), size)

    def _paste(self, frame: torch.Tensor, restored: torch.Tensor, to_face: torch.Tensor):
        """One frame: upsample background and restored face, blend the face back with the
        official masks; -> (sH, sW, 3) uint8."""
        s, f = self.scale, self.face
        size = (self.height * s, self.width * s)
        bg = self._upsample(frame, size)  # (1, 3, sH, sW)
        face_up = self._upsample((restored / 2 + 0.5).clamp(0, 1), (f * s, f * s))
        inv = invert_affine(to_face[None])  # crop -> frame
        inv_up = torch.cat([inv[..., :2], inv[..., 2:] * s], dim=-1)  # upscaled crop -> output
        out = paste_face(bg, face_up, self._parse_mask(restored, (f * s, f * s)), inv_up, s)
        return (out[0] * 255).clamp(0, 255).floor().to(torch.uint8).permute(1, 2, 0)

    def _parse_mask(self, restored: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """ParseNet face classes, blurred twice (101 px, sigma 11 at 512) and a 10 px border
        cleared, scaled to ``size`` (the upsampled crop): (1, 1, *size) in [0, 1]."""
        f = self.face
        logits = self.session.run("face_parser", face=restored[None])["parsing"]
        mask = self._face_classes[logits.float().argmax(1)][:, None]  # (1, 1, f, f) in {0, 1}
        k, sigma, edge = odd_kernel(101 * f / 512), 11 * f / 512, max(1, round(10 * f / 512))
        mask = gaussian_blur(gaussian_blur(mask, k, sigma), k, sigma)
        keep = torch.zeros_like(mask)
        keep[..., edge:-edge, edge:-edge] = 1
        return F.interpolate(mask * keep, size=size, mode="bilinear", align_corners=False)


def paste_face(
    bg: torch.Tensor,
    face: torch.Tensor,
    parse: torch.Tensor,
    inv: torch.Tensor,
    scale: int,
    roi: bool = True,
) -> torch.Tensor:
    """facelib's paste-back: ``face`` (1, 3, F, F) and its ``parse`` mask (1, 1, F, F) warped
    by ``inv`` (1, 2, 3; crop -> output pixels) into ``bg`` (1, 3, H, W), all in [0, 1].

    The square's warp is eroded by 2 * scale (its black rim), then by 2 * edge and blurred
    with a (2 * edge + 1) Gaussian, where edge = sqrt(face area) // 20; the parse mask caps
    that soft mask. ``roi``: work only on the face's bounding box (plus a margin): every mask
    is zero beyond the warped square and the feathering stays inside it, so the result is the
    same as on the whole frame, at a fraction of the cost (~8 of a 2048^2 frame's ~12 passes)."""
    h, w = bg.shape[-2:]
    x0 = y0 = 0
    x1, y1 = w, h
    if roi:
        side = face.shape[-1] - 1.0
        corners = torch.tensor([[0.0, 0.0], [side, 0.0], [0.0, side], [side, side]])
        pts = corners.to(inv) @ inv[0, :, :2].T + inv[0, :, 2]
        lo, hi = pts.min(0).values.tolist(), pts.max(0).values.tolist()
        x0, y0 = max(0, math.floor(lo[0]) - 2), max(0, math.floor(lo[1]) - 2)
        x1, y1 = min(w, math.ceil(hi[0]) + 3), min(h, math.ceil(hi[1]) + 3)
        if x0 >= x1 or y0 >= y1:  # the face lies outside the frame
            return bg
    shift = torch.tensor([x0, y0], dtype=inv.dtype, device=inv.device)
    local = torch.cat([inv[..., :2], inv[..., 2:] - shift[None, :, None]], dim=-1)
    size = (y1 - y0, x1 - x0)
    pasted = warp_affine(face, local, size)
    square = torch.ones_like(parse)
    inside = erode(warp_affine(square, local, size), 2 * scale)
    edge = int(float(inside.sum()) ** 0.5) // 20
    soft = gaussian_blur(erode(inside, 2 * edge), 2 * edge + 1)
    soft = torch.minimum(soft, warp_affine(parse, local, size))
    region = bg[..., y0:y1, x0:x1]
    out = bg.clone()
    out[..., y0:y1, x0:x1] = soft * (inside * pasted) + (1 - soft) * region
    return out


def windows(total: int, window: int = 16, overlap: int = 4) -> list[tuple[int, int]]:
    """The official ``video_sr.py`` windows [start, end) over ``total`` frames (its loop, minus
    the dropped last frame): the first ``window`` frames, then steps of ``window - overlap``."""
    out, i, j = [], 0, 0
    while i < total and j < total:
        j = min(i + window, total)
        out.append((i, j))
        i = j - overlap
    return out


def upscale_video(
    session,
    src: str | Path,
    out: str | Path,
    scale: int = 4,
    fidelity: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """An existing video -> ``out``, ``scale`` times the size, every frame kept, its audio
    muxed back. Streamed: one window of frames in memory; the file appears only when complete.
    ``progress(frames_done, frames_total)`` (total 0 when the container does not say)."""
    from .audio import AudioStream
    from .video import ClipWriter, VideoReader, VideoWriter

    check_output(out, input=src)  # never replace the input with the upscaled video
    reader = VideoReader(src)
    audio = None
    try:
        sr = SuperResolver(session, reader.height, reader.width, scale, fidelity)
        audio = AudioStream(src) if reader.has_audio else None
        h, w = reader.height * scale, reader.width * scale
        sink = ClipWriter(VideoWriter(out, w, h, reader.fps, audio=audio))
        try:
            for batch in reader.batches(sr.window):
                pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1
                for frames in sr.push(pixels):
                    sink.put(frames)
                    if progress:
                        progress(sr.frames_out, reader.frames)
            for frames in sr.flush():
                sink.put(frames)
            if progress:
                progress(sr.frames_out, reader.frames)
        except BaseException:
            sink.abort()
            raise
        sink.close()
    finally:
        reader.close()
        if audio is not None:
            audio.close()
    if sr.frames_without_face:
        log.warning(
            "%d of %d frames had no face detected; they reused the previous frame's landmarks",
            sr.frames_without_face,
            sr.frames_out,
        )
    log.info("upscaled %d frames x%d into %s", sr.frames_out, scale, out)
    return Path(out)
