"""`gigaseg … | head -1`: a reader that closes early ends the command quietly, as Unix tools do."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GIGASEG = Path(sysconfig.get_path("scripts")) / "gigaseg"

pytestmark = pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="sizing a pipe needs Linux")


def _pipe_into_reader(args: list[str], lines_read: int, unbuffered: bool = False) -> tuple[int, str]:
    """Run the ``gigaseg`` console script into a one-page pipe whose reader closes after ``lines_read`` lines.

    The pipe holds one page and the reader takes a byte at a time, so an output
    longer than a page is still being written when the reader closes, whatever the
    timing. Returns the status and stderr.
    """
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, os.sysconf("SC_PAGE_SIZE"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(ROOT)}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open(write_end, "wb") as stdout:
        command = [str(GIGASEG)] if GIGASEG.exists() else [sys.executable, "-m", "flows.cli"]
        process = subprocess.Popen([*command, *args], stdout=stdout, stderr=subprocess.PIPE, env=env)
    with open(read_end, "rb", buffering=0) as reader:
        for _ in range(lines_read):
            while reader.read(1) not in (b"\n", b""):
                pass
    _, err = process.communicate(timeout=300)
    return process.returncode, err.decode()


def test_a_reader_that_closes_after_one_line_gets_no_traceback() -> None:
    # Unbuffered, a write cut short by the reader's going is not an error for Python itself.
    status, err = _pipe_into_reader(["segment", "--help"], lines_read=1)
    assert "Traceback" not in err
    assert err == ""
    assert status == 1


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_reader_gone_before_the_first_line_gets_no_traceback(unbuffered: bool) -> None:
    status, err = _pipe_into_reader(["models"], lines_read=0, unbuffered=unbuffered)
    assert "Traceback" not in err
    assert err == ""
    assert status == 1
