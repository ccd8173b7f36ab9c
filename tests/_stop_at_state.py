"""Kill a ``gigaseg`` run at a state, not a time: the run freezes itself once N blocks are done.

A test that kills a run mid-way starts it with :func:`gigaseg_stopping_after` instead of
``python -m flows.cli``: the child counts the blocks done in it — blocks it wrote
(``OutputStore.write_block`` returned, so their done record is written) or, as a Ray
driver, blocks its actors reported — and sends itself SIGSTOP at the N-th. The test waits
for that stop (:func:`wait_until_stopped`) and kills it. However fast or loaded the machine,
the run dies with the blocks the test chose done (with Ray, plus those its actors held),
never after it finished.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

STOP_AFTER_ENV = "GIGASEG_TEST_STOP_AFTER_BLOCKS"

_LAUNCHER = """
import os, signal, sys, threading
from pipeline.execution.ray_pool import RayBlockRunner
from pipeline.stores.output import OutputStore

stop_after, done, lock = int(os.environ["GIGASEG_TEST_STOP_AFTER_BLOCKS"]), 0, threading.Lock()

def counted(method):
    def wrapper(*args, **kwargs):
        global done
        result = method(*args, **kwargs)
        with lock:
            done += 1
            if done == stop_after:
                os.kill(os.getpid(), signal.SIGSTOP)
        return result
    return wrapper

OutputStore.write_block = counted(OutputStore.write_block)
RayBlockRunner._block_done = counted(RayBlockRunner._block_done)
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


def gigaseg_stopping_after(
    blocks: int, args: list[str], env: dict[str, str], cwd: os.PathLike[str] | str
) -> subprocess.Popen:
    """``gigaseg ARGS`` in a child that stops itself (SIGSTOP) once ``blocks`` blocks are done."""
    return subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, *args],
        env={**env, STOP_AFTER_ENV: str(blocks)},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_until_stopped(proc: subprocess.Popen, timeout_s: float) -> None:
    """Return once ``proc`` has stopped itself; fail if it ended or ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid and os.WIFSTOPPED(status):
            return
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not signal it
            raise AssertionError(f"the run ended (wait status {status}) before reaching its stopping state")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach its stopping state in {timeout_s} s")
        time.sleep(0.01)
