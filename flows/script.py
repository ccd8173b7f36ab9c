"""Running a command the way ``gigaseg`` promises, for the command line and the flow scripts alike.

User mistakes (bad files, bad options) print one line, ``gigaseg: <what is wrong>``, and
exit with status 2; Ctrl-C exits with 130 and says how to resume; a reader that closes
early (``gigaseg models | head -1``) ends the command quietly, with status 1. The flow scripts
(``python flows/segment_scene.py ARGS``, what ``ray submit`` runs) use this module, not
the command line, so each script's module is loaded once, as ``__main__``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import gc
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

from flows.prefect_server import use_prefect_api
from pipeline.errors import expected_failure
from pipeline.execution.heap_allocator import allocator_environment, allocator_in_use
from pipeline.execution.process_memory import bound_process_memory

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_READER_GONE = 1

RESTARTED = "GIGASEG_RESTARTED_ON_ALLOCATOR"
"""Set in a command started over on its allocator, so it never starts over twice."""

Command = Callable[[argparse.Namespace], "int | None"]


def say(quiet: bool, text: str) -> None:
    """Progress and summaries go to stderr, unless ``--quiet``."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _log_warnings_as_one_line() -> None:
    """Our warnings as ``gigaseg: …`` lines; other libraries' loggers keep their own settings."""
    logger = logging.getLogger("gigaseg")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("gigaseg: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


@functools.cache
def _exit_without_collecting() -> None:
    """At exit, keep the interpreter's last garbage collections off the objects alive then.

    Its finalisation otherwise walks every object of torch, Prefect and MLflow once
    more before the process may end; what a command wrote is closed by then.
    """
    atexit.register(gc.freeze)


def restart_on_chosen_allocator() -> None:
    """Start this command over, once, on TCMalloc where installed (:mod:`pipeline.execution.heap_allocator`).

    Called first by the ``gigaseg`` command when it is the process's own entry point, and
    by each flow script run as one, before their heavy imports: the same interpreter,
    arguments, process id and open files, with ``LD_PRELOAD`` set. Nothing happens where
    TCMalloc is missing, already loaded, or turned off (``GIGASEG_ALLOCATOR=system``), or
    when the exec fails. A bad ``GIGASEG_ALLOCATOR`` ends the command with one line and
    status 2.
    """
    if os.environ.get(RESTARTED) or allocator_in_use() == "tcmalloc":
        return
    try:
        environment = allocator_environment()
    except ValueError as exc:
        print(f"gigaseg: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if not environment:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):
        os.execve(sys.executable, list(sys.orig_argv), {**os.environ, **environment, RESTARTED: "1"})


@contextlib.contextmanager
def loading_without_collecting() -> Iterator[None]:
    """Load a command's modules with the cyclic garbage collector paused, then freeze what they made.

    Importing torch, Prefect and their dependencies makes some 300,000 objects that live as
    long as the process. The collector's full passes walk all of them: several times while
    they load and again, now and then, during the run. Frozen (``gc.freeze``), they are left
    out of every later pass; the little garbage the imports themselves leave is kept. What it
    saves is in bench/RESULTS.md ("Fixed cost of one command"). The collector's earlier
    state is restored, so a caller that had paused it keeps it paused.

    >>> import gc
    >>> with loading_without_collecting():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def prepare_process() -> None:
    """What every command sets up before parsing: one-line warnings, bounded GDAL memory, a quick exit."""
    from rasterio.errors import NotGeoreferencedWarning

    _log_warnings_as_one_line()
    _exit_without_collecting()
    # Said once, in one line, by check_inputs; rasterio would repeat it at every open.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    bound_process_memory()


@contextlib.contextmanager
def quiet_when_the_reader_goes() -> Iterator[None]:
    """End quietly with status 1 when standard output's reader has closed (a pipe into ``head``).

    Standard output is flushed inside, so a missed write fails here and not at exit;
    then it is pointed at devnull, so the interpreter's own last flush cannot fail
    again. Python's documentation recommends this and status 1 (``signal``, note on SIGPIPE).
    """
    try:
        try:
            yield
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_READER_GONE)


def run_command(command: Command, args: argparse.Namespace) -> int:
    """Run ``command``: an expected failure becomes one line and status 2, Ctrl-C status 130.

    What is expected is decided in one place, :func:`pipeline.errors.expected_failure`;
    anything else propagates with its traceback (status 1).
    """
    try:
        return int(command(args) or 0)
    except Exception as exc:
        line = expected_failure(exc)
        if line is None:
            raise
        print(f"gigaseg: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gigaseg: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_script(
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    command: Command,
    argv: Sequence[str] | None = None,
) -> int:
    """A flow script's ``main``: exactly ``gigaseg NAME ARGS`` (same options, messages and status)."""
    with loading_without_collecting():  # the script's own imports are done by now; freeze them too
        prepare_process()
        parser = argparse.ArgumentParser(prog=f"gigaseg {name}")
        add_arguments(parser)

    def on_the_prefect_api(args: argparse.Namespace) -> int | None:
        use_prefect_api()  # the same Prefect API as `gigaseg NAME` (Prefect, imported already, re-reads it)
        return command(args)

    with quiet_when_the_reader_goes():
        return run_command(on_the_prefect_api, parser.parse_args(sys.argv[1:] if argv is None else argv))
