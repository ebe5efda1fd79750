"""The exceptions of bcdi-gapfill, and how a command line tells a user error from a bug.

Every exception class of the package lives here and derives from `GapfillError`, and also
from the built-in class a caller would catch for it (a refused memory request is a
MemoryError, an empty support a RuntimeError), so ``except ValueError`` keeps working.
"""
from __future__ import annotations

__all__ = ["GapfillError", "InsufficientMemoryError", "SupportError", "UnsupportedBcdiError", "USER_ERRORS",
           "is_user_error", "error_text"]


class GapfillError(Exception):
    """Base class of the exceptions raised by bcdi-gapfill itself."""


class InsufficientMemoryError(GapfillError, MemoryError, ValueError):
    """A job that would not fit in memory, refused before allocating (a MemoryError and a ValueError)."""


class SupportError(GapfillError, RuntimeError):
    """The support update left an empty support (the start has diverged)."""


class UnsupportedBcdiError(GapfillError, RuntimeError):
    """The installed bcdi does not save its PyNX pair the way this stage hooks into (bcdi 0.3.1);
    the CLI reports it in one line, like other input errors."""


#: Built-in exceptions that mean bad input, a missing file or too little memory: a command
#: reports them in one line (exit status 2) instead of a traceback.
USER_ERRORS = (ValueError, TypeError, OSError, ImportError, MemoryError)


def is_user_error(exc: BaseException) -> bool:
    """True for an exception a command reports in one line: one of `USER_ERRORS`, or any
    exception class of bcdi_gapfill itself (found by its module, without importing it)."""
    return isinstance(exc, USER_ERRORS) or any(
        cls.__module__.split(".")[0] == "bcdi_gapfill" for cls in type(exc).__mro__)


def error_text(exc: BaseException) -> str:
    """The one-line message of a user error (a bare MemoryError gets one)."""
    text = str(exc)
    if isinstance(exc, MemoryError) and not text:
        return "out of memory (MemoryError): free memory, or process a smaller array"
    return text or type(exc).__name__
