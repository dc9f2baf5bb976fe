"""What the command line prints while it works: progress lines and per-engine summaries. Library
code logs; only these printers write to the terminal (stderr)."""

from __future__ import annotations

import math
import sys


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
        if tty:
            print(
                "\r" + line,
                end="" if p.steps_done < p.steps_total else "\n",
                file=sys.stderr,
                flush=True,
            )
        elif p.steps_done % max(p.steps_total // p.clips, 1) == 0:
            print(line, file=sys.stderr, flush=True)

    return show


def build_progress(event: str, name: str, m: dict | None) -> None:
    if event == "start":
        print(f"building {name} ...", file=sys.stderr, flush=True)
        return
    parity = m["parity"]
    if "skipped" in parity:
        check = "NOT checked (--no-check)"
    else:
        numbers = [v for r in parity["results"].values() for v in r["outputs"].values()]
        check = (
            f"min cosine {min(v['cosine'] for v in numbers):.6f}"
            if "cosine" in numbers[0]
            else f"max rel {max(v['rel'] for v in numbers):.2e}"
        )
    print(
        f"  {name:15s} {m['backend']} {m['precision']} {m['total_seconds']:7.1f} s  "
        f"vs ONNX: {check}",
        file=sys.stderr,
    )
