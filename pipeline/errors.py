"""Errors that are the user's input's fault, reported as one line without a traceback.

:func:`expected_failure` is the one place that decides which exceptions are the
user's (a bad file, a bad option, a location that cannot be written, an
object-store refusal) and what their one line says; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno


class InputError(Exception):
    """Bad input or arguments: the command line prints ``gigaseg: <message>`` and exits 2.

    The message names the file (or option) and what is wrong with it.
    """


_LOCATION_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a folder",
    errno.ENOTDIR: "a part of the path is not a folder",
}
"""Operating-system refusals that are about where the user pointed us, not about our code."""


def expected_failure(exc: BaseException) -> str | None:
    """The one line for an expected failure (without ``gigaseg: ``), or None for a bug.

    Expected: :class:`InputError` (every check of inputs, options and locations
    raises one), and an :class:`OSError` by which the system refuses a location
    (denied, read-only, full, a folder where a file should be).
    """
    if isinstance(exc, InputError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in _LOCATION_ERRNOS:
        where = exc.filename if exc.filename is not None else "a location"
        return f"{where}: cannot write there ({_LOCATION_ERRNOS[exc.errno]})"
    return None
