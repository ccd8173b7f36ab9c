"""Who writes a segmentation's MLflow run: this process, or a helper process started early.

Importing MLflow and opening its store are seconds of a short command's time. A
command that is about to track one segmentation calls :func:`start_helper` first: a
child process imports MLflow (and opens an existing store) on another core while
this one imports torch and Prefect and runs the job, then makes the run's records
as :func:`track_segment_run <pipeline.tracking.segment_run.track_segment_run>`
hands them over. The helper runs a :class:`LocalRecorder` itself, so the run's tags,
params, metrics and artifacts are those an in-process run gets.

:meth:`HelperRecorder.start` waits for the run to start, so a store that refuses
still fails the command before any work; what is logged next goes without waiting,
and :meth:`HelperRecorder.sync` waits for all of it (raising the helper's first
failure) before the job publishes its outputs.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import InputError
from pipeline.tracking import runs as tracking

Artifact = tuple[str, str | None]
"""A local file and the run folder it goes to (None: the run's root)."""


class Recorder(Protocol):
    """The calls a tracked segmentation makes on its MLflow run, in this order."""

    def start(self, experiment: str, run_name: str, tags: Mapping[str, str], nested: bool) -> None: ...

    def log(
        self,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        table: tuple[str, dict[str, list[Any]]] | None = None,
        artifacts: Sequence[Artifact] = (),
    ) -> None: ...

    def sync(self) -> str: ...

    def end(self, status: str) -> None: ...


class LocalRecorder:
    """The run made by MLflow in this process (a nested run's parent must be active here)."""

    def __init__(self) -> None:
        self.run_id: str | None = None

    def start(self, experiment: str, run_name: str, tags: Mapping[str, str], nested: bool) -> None:
        """Start the run (:func:`pipeline.tracking.runs.start_run`: refusals are one-line errors)."""
        self.run_id = tracking.start_run(experiment, run_name, tags, nested).info.run_id

    def log(
        self,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        table: tuple[str, dict[str, list[Any]]] | None = None,
        artifacts: Sequence[Artifact] = (),
    ) -> None:
        """Params, metrics, a table (its artifact name and columns) and files, into the run."""
        import mlflow

        if params:
            mlflow.log_params(dict(params))
        if metrics:
            mlflow.log_metrics(dict(metrics))
        if table is not None:
            mlflow.log_table(table[1], table[0])
        for path, folder in artifacts:
            mlflow.log_artifact(path, folder)

    def sync(self) -> str:
        """The run's id (everything is logged already)."""
        assert self.run_id is not None
        return self.run_id

    def end(self, status: str) -> None:
        """End the run (nothing to end if it never started)."""
        if self.run_id is not None:
            tracking.end_run(status)


class HelperRecorder:
    """The same calls, made by a helper process (:func:`serve`) that imported MLflow meanwhile."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection):
        self._process = process
        self._conn = conn

    def start(self, experiment: str, run_name: str, tags: Mapping[str, str], nested: bool) -> None:
        """Start the run and wait for it; on a refusal the helper is done and the error raised here."""
        if nested:
            raise ValueError("a nested run needs its parent run, which is active in this process")
        self._conn.send(("start", (experiment, run_name, dict(tags), nested)))
        try:
            self._reply()
        except BaseException:
            self.end("FAILED")
            raise

    def log(
        self,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        table: tuple[str, dict[str, list[Any]]] | None = None,
        artifacts: Sequence[Artifact] = (),
    ) -> None:
        """Hand the records over without waiting (files must stay until :meth:`sync`)."""
        params = None if params is None else dict(params)
        metrics = None if metrics is None else dict(metrics)
        self._conn.send(("log", (params, metrics, table, list(artifacts))))

    def sync(self) -> str:
        """Wait until everything handed over is logged; the run's id, or the helper's first failure."""
        self._conn.send(("sync", ()))
        return self._reply()

    def end(self, status: str) -> None:
        """End the run, wait for the helper to exit; a failure to end is raised here."""
        if self._conn.closed:
            return
        try:
            self._conn.send(("end", (status,)))
            self._reply()
        finally:
            self._conn.close()
            self._process.wait()

    def discard(self) -> None:
        """Stop a helper that was never given a run (it has written nothing)."""
        if not self._conn.closed:
            self._conn.close()
        self._process.terminate()
        self._process.wait()

    def _reply(self) -> Any:
        try:
            ok, value = pickle.loads(self._conn.recv_bytes())
        except EOFError:
            code = self._process.wait()
            raise RuntimeError(f"the MLflow helper process exited with status {code}") from None
        if not ok:
            raise value
        return value


_pending: HelperRecorder | None = None
"""The helper started for this process's next tracked segmentation, not yet taken."""


def start_helper() -> None:
    """Start the helper for the next tracked segmentation of this process (if none is waiting)."""
    global _pending
    if _pending is not None:
        return
    ours, theirs = socket.socketpair()
    root = str(Path(__file__).resolve().parents[2])
    code = f"import sys; sys.path.insert(0, {root!r}); from pipeline.tracking.recorder import serve; serve()"
    fd = theirs.fileno()
    try:
        process = subprocess.Popen(  # its own process group: a Ctrl-C is the command's to handle
            [sys.executable, "-c", code, str(fd)], stdin=subprocess.DEVNULL, pass_fds=[fd], process_group=0
        )
    except OSError:  # no process to spare: the run is written in this process, as without a helper
        ours.close()
        return
    finally:
        theirs.close()
    conn = Connection(ours.detach())
    conn.send((list(sys.path), list(sys.argv)))
    _pending = HelperRecorder(process, conn)


def take_helper() -> HelperRecorder | None:
    """The waiting helper, now the caller's (None if none was started)."""
    global _pending
    helper, _pending = _pending, None
    return helper


def discard_helper() -> None:
    """Stop the waiting helper, if any: the command did not track a segmentation after all."""
    helper = take_helper()
    if helper is not None:
        helper.discard()


def serve() -> None:
    """The helper process: warm MLflow up, then run the calls it is sent on a :class:`LocalRecorder`.

    After a call fails the rest are skipped until ``end``, and the failure is the
    answer to the next ``start`` or ``sync``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's: it ends the run KILLED
    conn = Connection(int(sys.argv[1]))
    paths, argv = conn.recv()
    sys.path[:] = paths
    sys.argv[:] = argv  # MLflow's source tags name the command, as in its own process
    _log_like_the_command()
    _warm_up()
    recorder = LocalRecorder()
    failure: BaseException | None = None
    while True:
        try:
            op, args = conn.recv()
        except EOFError:  # the command is gone without ending the run
            recorder.end("KILLED")
            return
        if op == "end":
            try:
                recorder.end(*args)
            except BaseException as exc:
                _send(conn, False, exc)
            else:
                _send(conn, True, None)
            gc.freeze()  # the command waits for this process to exit: skip collecting MLflow's objects
            return
        result = None
        if failure is None:
            try:
                result = getattr(recorder, op)(*args)
            except BaseException as exc:
                failure = exc
        if op in ("start", "sync"):
            _send(conn, failure is None, result if failure is None else failure)


def _send(conn: Connection, ok: bool, value: Any) -> None:
    """One answer; a failure keeps its type where it survives pickling, and its traceback as a note."""
    if isinstance(value, BaseException) and not isinstance(value, InputError):
        value.add_note("in the MLflow helper process:\n" + "".join(traceback.format_exception(value)))
    try:
        answer = pickle.dumps((ok, value))
        pickle.loads(answer)
    except Exception:
        answer = pickle.dumps((ok, RuntimeError(f"{type(value).__name__}: {value}")))
    conn.send_bytes(answer)


def _log_like_the_command() -> None:
    """Library warnings as the command shows them: its console handler's level (Prefect's setting)."""
    level = os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING").upper()
    handler = logging.StreamHandler()
    handler.setLevel(logging.getLevelNamesMapping().get(level, logging.WARNING))
    handler.setFormatter(logging.Formatter("%(name)s - %(message)s"))
    logging.getLogger().addHandler(handler)


def _warm_up() -> None:
    """What every run needs before it starts: MLflow's modules, the source tags, an existing store.

    Nothing is written: a store is opened only if its database is there already.
    Failures are left for the run's start, which reports them.
    """
    try:
        import mlflow
        from mlflow.tracking.context.registry import resolve_tags

        uri = tracking.configure()
        resolve_tags({})  # the git provider keeps what it found for the run's start
        if tracking.is_embedded(uri) and Path(uri.removeprefix("sqlite:///")).is_file():
            mlflow.MlflowClient().get_experiment_by_name(tracking.SEGMENT_EXPERIMENT)
    except Exception:
        pass
