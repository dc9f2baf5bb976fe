"""Checks of the places a command writes, made before any work so that a bad path costs the user
nothing: a folder that is a file, is missing, or cannot be written in (tried, not inferred from
permission bits, which say nothing for root, read-only mounts or /proc). Shared by export, build,
the runtime's outputs and the benchmarks."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OptionError


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in the existing ``folder`` (None: one can; tried with a
    temporary file that is removed at once)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".hallo2rt-probe-"):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def folder_problem(folder: Path) -> str | None:
    """What keeps a command from writing a file in ``folder`` (None: nothing)."""
    if not folder.is_dir():
        return f"the folder {folder} {'is a file' if folder.exists() else 'does not exist'}"
    why = unwritable(folder)
    return None if why is None else f"cannot write in {folder} ({why})"


def check_file_target(path: Path, option: str) -> Path:
    """An output file ``path`` of ``option``: not a folder, in a folder that exists and can be
    written (``OptionError`` naming the option otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise OptionError(f"{option} {path} is a folder: give a file name inside it")
    problem = folder_problem(path.parent)
    if problem:
        raise OptionError(f"{option} {path}: {problem}; create it or choose another")
    return path


@contextlib.contextmanager
def output_folder(out: Path, option: str = "--out") -> Iterator[Path]:
    """``out`` created if needed and checked writable; if the block fails, the folders made
    here are removed again when still empty (a failed build or export leaves nothing new)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"{option} {out} is a file: give a folder (it is created if missing)")
    made = []  # the folders this call creates, deepest last
    for folder in [*reversed(out.parents), out]:
        if not folder.exists():
            made.append(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(
            f"{option} {out}: the folder cannot be created ({exc.strerror or exc})"
        ) from exc
    why = unwritable(out)
    if why:
        _remove_empty(made)
        raise OptionError(f"{option} {out}: cannot write in this folder ({why})")
    try:
        yield out
    except BaseException:
        _remove_empty(made)
        raise


def _remove_empty(made: list[Path]) -> None:
    for folder in reversed(made):
        with contextlib.suppress(OSError):  # not empty (or gone): keep it
            folder.rmdir()
