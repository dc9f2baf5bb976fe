"""Errors for user-supplied media, shared by the audio and video code."""

from __future__ import annotations

from ..engines.errors import Hallo2rtError


class MediaError(Hallo2rtError, ValueError):
    """A user-supplied media file is missing, unreadable or unusable; says which and why."""
