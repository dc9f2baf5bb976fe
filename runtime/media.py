"""Errors for user-supplied media and checks of the paths a run reads and writes, shared by the
audio and video code."""

from __future__ import annotations

import os
from pathlib import Path

from ..engines.errors import Hallo2rtError


class MediaError(Hallo2rtError, ValueError):
    """A user-supplied media file is missing, unreadable or unusable; says which and why."""


def check_output(out: str | Path, **inputs: str | Path | None) -> Path:
    """``out`` as a path a run may write: not one of its ``inputs`` (by resolved path or, for
    links and hard links, by inode: the finished output would replace the input) and not a
    directory. inputs: option name -> path (None: not given). Checked before any work."""
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
    return out
