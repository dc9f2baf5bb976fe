"""Errors for user-supplied media and checks of the paths a run reads and writes, shared by the
audio and video code."""

from __future__ import annotations

import os
from pathlib import Path

from ..engines.errors import Hallo2rtError
from ..engines.paths import folder_problem


class MediaError(Hallo2rtError, ValueError):
    """A user-supplied media file is missing, unreadable or unusable; says which and why."""


VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")  # the MP4 family: what VideoWriter writes


def check_output(out: str | Path, **inputs: str | Path | None) -> Path:
    """``out`` as a path a run may write, checked before any work: not a directory, not one of
    its ``inputs`` (by resolved path or, for links and hard links, by inode: the finished output
    would replace the input), an MP4 name (the file is an MP4 whatever it is called), in an
    existing folder this process can create files in (tried). inputs: option name -> path
    (None: not given)."""
    out = Path(out)
    if out.is_dir():
        raise MediaError(f"--out {out} is a directory: give a file name, e.g. {out / 'out.mp4'}")
    for option, path in inputs.items():
        if path is None:
            continue
        same = Path(path).resolve() == out.resolve()
        if not same and out.exists() and Path(path).exists():
            same = os.path.samefile(path, out)
        if same:
            raise MediaError(
                f"--out {out} is the {option} file: writing the video would destroy it; "
                "choose another output path"
            )
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise MediaError(
            f"--out {out}: the output is an MP4 video; give it an .mp4 name, e.g. "
            f"{out.with_suffix('.mp4')}"
        )
    problem = folder_problem(out.parent)
    if problem:
        raise MediaError(f"--out {out}: {problem}; choose a writable folder")
    return out
