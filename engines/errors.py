"""The base of every error hallo2rt raises for a cause the user can fix (a bad option, a missing
file or package, a stale engine, bad media). The CLI prints these as one line naming the problem
and the fix; anything else is a bug and keeps its traceback. Each subclass also derives from the
built-in error it used to be, so ``except ValueError`` code keeps working."""

from __future__ import annotations


class Hallo2rtError(Exception):
    """A problem with the user's input, setup or engines, with a message that says the fix."""


class OptionError(Hallo2rtError, ValueError):
    """An option or config field out of its range, or options that do not go together."""


class SetupError(Hallo2rtError, RuntimeError):
    """A package or device this command needs is missing here."""


class FeedError(Hallo2rtError, ValueError):
    """Inputs handed to an engine do not match its spec (names, dtypes, shapes or device)."""
