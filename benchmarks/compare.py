"""``hallo2rt compare REF.mp4 OUT.mp4``: how far one video is from another, frame by frame.

The gate for anything that is not the faithful path (a speed preset, an fp16 or INT8 engine, a
new backend): render the same inputs both ways, then compare. Per frame: PSNR over RGB (peak 255)
and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, on each RGB channel, averaged;
computed by ``pytorch_msssim``), the same two over a mouth rectangle when one is given (lip sync is
what a cheaper sampler loses first); then the frame counts, sizes and rates, and the audio tracks
(present in both, same length, same samples). Both videos are decoded in step, one batch at a time,
so memory does not grow with their length.

With random weights the numbers say nothing about quality; with the real checkpoints they are the
user's gate (README).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engines.errors import OptionError, SetupError
from ..runtime.media import MediaError
from ..runtime.portrait import Box

BATCH = 16  # frames decoded and compared at a time
SSIM_WINDOW = 11  # the standard window; regions smaller than it use their largest odd side


@dataclass
class Stats:
    """Mean, minimum and the index of the worst frame of a per-frame metric."""

    mean: float
    min: float
    worst_frame: int

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        """Identical frames (PSNR inf) count as 100 dB in the mean, so that one exact frame
        does not make it infinite; the mean is inf only when every frame is identical."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0 or np.isnan(arr).all():
            return cls(math.nan, math.nan, -1)
        worst = int(np.nanargmin(arr))
        capped = np.where(np.isinf(arr), 100.0, arr)
        mean = math.inf if np.isinf(arr).all() else float(np.nanmean(capped))
        return cls(mean, float(arr[worst]), worst)


@dataclass
class Comparison:
    reference: str
    output: str
    frames: tuple[int, int]  # decoded frames of each
    compared: int  # frames compared (the shorter video's)
    size: tuple[int, int]  # width, height
    fps: tuple[float, float]
    psnr: Stats
    ssim: Stats
    mouth: Box | None = None
    mouth_psnr: Stats | None = None
    mouth_ssim: Stats | None = None
    audio: dict = field(default_factory=dict)  # presence, lengths, max |difference|
    per_frame: dict[str, list[float]] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """What makes the two videos not comparable frame for frame (besides pixel values)."""
        out = []
        if self.frames[0] != self.frames[1]:
            out.append(f"frame counts differ: {self.frames[0]} vs {self.frames[1]}")
        if not math.isclose(self.fps[0], self.fps[1]):
            out.append(f"frame rates differ: {self.fps[0]:g} vs {self.fps[1]:g}")
        out += self.audio.get("problems", [])
        return out

    def text(self) -> str:
        lines = [
            f"reference {self.reference}: {self.frames[0]} frames",
            f"output    {self.output}: {self.frames[1]} frames",
            f"compared  {self.compared} frames of {self.size[0]}x{self.size[1]}",
            _row("PSNR", self.psnr, "dB"),
            _row("SSIM", self.ssim, ""),
        ]
        if self.mouth is not None and self.mouth_psnr and self.mouth_ssim:
            box = ",".join(str(v) for v in self.mouth)
            lines += [
                _row(f"mouth PSNR ({box})", self.mouth_psnr, "dB"),
                _row(f"mouth SSIM ({box})", self.mouth_ssim, ""),
            ]
        lines.append("audio     " + self.audio.get("summary", "not compared"))
        problems = self.problems
        lines.append(
            "checks    "
            + ("; ".join(problems) if problems else "frame counts, rates and audio agree")
        )
        return "\n".join(lines)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def _row(name: str, s: Stats, unit: str) -> str:
    return f"{name:10s} mean {s.mean:.4g} {unit}  min {s.min:.4g} {unit} (frame {s.worst_frame})"


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB, peak 255) of (N, 3, H, W) float tensors in [0, 255]; inf if equal."""
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (N, 3, H, W) float tensors in [0, 255] (pytorch_msssim)."""
    try:
        from pytorch_msssim import ssim as _ssim
    except ImportError as exc:
        raise SetupError(
            "hallo2rt compare needs pytorch-msssim: pip install pytorch-msssim"
        ) from exc
    side = min(a.shape[-2:])
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)
    if window < 3:
        return torch.full((a.shape[0],), float("nan"))
    return _ssim(a, b, data_range=255, size_average=False, win_size=window)


def _pairs(ref, out) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
    """Both videos in step: (ref batch, out batch, frames of ref so far, of out so far)."""
    ref_it, out_it = ref.batches(BATCH), out.batches(BATCH)
    n_ref = n_out = 0
    while True:
        a, b = next(ref_it, None), next(out_it, None)
        n_ref += 0 if a is None else len(a)
        n_out += 0 if b is None else len(b)
        if a is None and b is None:
            return
        yield a, b, n_ref, n_out


def compare_videos(
    reference: str | Path, output: str | Path, mouth: Box | None = None
) -> Comparison:
    """Frame-by-frame comparison of ``output`` against ``reference`` (same size required)."""
    from ..runtime.video import VideoReader

    with VideoReader(reference) as ref, VideoReader(output) as out:
        if (ref.width, ref.height) != (out.width, out.height):
            raise MediaError(
                f"the videos differ in size ({ref.width}x{ref.height} vs {out.width}x"
                f"{out.height}): compare renders of the same --size and --upscale"
            )
        if mouth is not None:
            mouth = tuple(int(round(v)) for v in mouth)  # type: ignore[assignment]
            x0, y0, x1, y1 = mouth
            if not (0 <= x0 < x1 <= ref.width and 0 <= y0 < y1 <= ref.height):
                raise OptionError(
                    f"--mouth {x0},{y0},{x1},{y1} is not inside the {ref.width}x{ref.height} "
                    "frames: give x0,y0,x1,y1 in video pixels"
                )
        per: dict[str, list[float]] = {"psnr": [], "ssim": []}
        if mouth is not None:
            per.update(mouth_psnr=[], mouth_ssim=[])
        frames = (0, 0)
        for a, b, n_ref, n_out in _pairs(ref, out):
            frames = (n_ref, n_out)
            if a is None or b is None:
                continue  # past the shorter video: counted, not compared
            k = min(len(a), len(b))
            x = torch.from_numpy(a[:k]).permute(0, 3, 1, 2).double()
            y = torch.from_numpy(b[:k]).permute(0, 3, 1, 2).double()
            per["psnr"] += psnr(x, y).tolist()
            per["ssim"] += ssim(x.float(), y.float()).tolist()
            if mouth is not None:
                x0, y0, x1, y1 = mouth
                mx, my = x[..., y0:y1, x0:x1], y[..., y0:y1, x0:x1]
                per["mouth_psnr"] += psnr(mx, my).tolist()
                per["mouth_ssim"] += ssim(mx.float(), my.float()).tolist()
        fps = (float(ref.fps), float(out.fps))
        size = (ref.width, ref.height)
    return Comparison(
        reference=str(reference),
        output=str(output),
        frames=frames,
        compared=len(per["psnr"]),
        size=size,
        fps=fps,
        psnr=Stats.of(per["psnr"]),
        ssim=Stats.of(per["ssim"]),
        mouth=mouth,
        mouth_psnr=Stats.of(per["mouth_psnr"]) if mouth is not None else None,
        mouth_ssim=Stats.of(per["mouth_ssim"]) if mouth is not None else None,
        audio=compare_audio(reference, output),
        per_frame=per,
    )


def compare_audio(reference: str | Path, output: str | Path) -> dict:
    """Audio of both at 16 kHz mono: presence, lengths (s) and the largest sample difference.
    Encoded AAC differs slightly between encodes; equal inputs re-encoded stay far below 0.05."""
    from ..runtime.audio import load_audio

    tracks = {}
    for name, path in (("reference", reference), ("output", output)):
        try:
            tracks[name] = load_audio(path)[0][0]
        except MediaError:
            tracks[name] = None
    a, b = tracks["reference"], tracks["output"]
    if a is None or b is None:
        present = [n for n, t in tracks.items() if t is not None]
        problems = [] if not present else [f"only the {present[0]} has audio"]
        return {
            "summary": "neither has audio" if not present else problems[0],
            "problems": problems,
        }
    la, lb = len(a) / 16000, len(b) / 16000
    n = min(len(a), len(b))
    diff = float(np.abs(a[:n] - b[:n]).max()) if n else 0.0
    problems = []
    if abs(la - lb) > 0.05:
        problems.append(f"audio lengths differ: {la:.2f} s vs {lb:.2f} s")
    summary = f"{la:.2f} s vs {lb:.2f} s, max |difference| {diff:.3g}"
    return {"seconds": [la, lb], "max_abs_diff": diff, "summary": summary, "problems": problems}
