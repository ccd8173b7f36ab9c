"""Errors that are the user's input's fault, reported as one line without a traceback."""

from __future__ import annotations


class InputError(Exception):
    """Bad input or arguments: the command line prints ``gigaseg: <message>`` and exits 2.

    The message names the file (or option) and what is wrong with it.
    """
