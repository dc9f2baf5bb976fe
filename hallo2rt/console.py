"""What the command line prints while it works: progress lines and per-engine summaries. Library
code logs; only these printers write to the terminal (stderr)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from hallo2rt.engines.manifest import Manifest


def progress_printer(quiet: bool):
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def show(p) -> None:
        eta = "?" if math.isnan(p.eta) else f"{p.eta:.0f}s"
        line = (
            f"clip {min(p.clip + 1, p.clips)}/{p.clips}  step {p.steps_done}/"
            f"{p.steps_total}  {p.fps:.2f} fps  ETA {eta}"
        )
        if p.steps_done == 0:
            line = f"{p.clips} clip(s) of {p.steps_total // max(p.clips, 1)} steps: preparing ..."
        if tty:
            print(
                "\r" + line + "\x1b[K",  # clear the rest of a longer previous line
                end="" if p.steps_done < p.steps_total else "\n",
                file=sys.stderr,
                flush=True,
            )
        elif p.steps_done <= 1 or p.steps_done % max(p.steps_total // p.clips, 1) == 0:
            print(line, file=sys.stderr, flush=True)  # the start, the first step, each clip

    return show


def _engine_progress(verb: str, summary: Callable[[Manifest], str]):
    """A per-engine progress callback ``(event, name, manifest)`` of export and build: a line
    when an engine starts (``verb``) and one with ``summary(manifest)`` when it is done."""

    def show(event: str, name: str, m: Manifest | None) -> None:
        if event == "start" or m is None:
            print(f"{verb} {name} ...", file=sys.stderr, flush=True)
            return
        check = m.parity.summary() if m.parity else "NOT checked"
        print(f"  {name:15s} {summary(m)}{check}", file=sys.stderr, flush=True)

    return show


# ``build_engines``' progress: backend, precision, time and the check against the ONNX graph
build_progress = _engine_progress(
    "building", lambda m: f"{m.backend} {m.precision} {m.total_seconds:7.1f} s  vs ONNX: "
)
# ``export_engines``' progress: precision, size, time and the parity against PyTorch
export_progress = _engine_progress(
    "exporting",
    lambda m: (
        f"{m.precision} {(m.onnx_bytes or 0) / 1e6:9.1f} MB  "
        f"{m.export_seconds or 0:7.1f} s  parity "
    ),
)


def frame_counter(quiet: bool, what: str = "upscaled"):
    """``progress(done, total)`` for frame-by-frame work: a rewritten line on a terminal, else a
    line at every tenth of the total (every 250 frames when the total is unknown)."""
    if quiet:
        return None
    tty = sys.stderr.isatty()
    shown = [-1]

    def show(done: int, total: int) -> None:
        of = f"/{total}" if total else ""
        if tty:
            print(f"\r{what} {done}{of} frames", end="", file=sys.stderr, flush=True)
            return
        mark = done * 10 // total if total else done // 250
        if mark != shown[0]:
            shown[0] = mark
            print(f"{what} {done}{of} frames", file=sys.stderr, flush=True)

    return show
