"""Servers on loopback for benches and tests: a free port, and moto's S3 server as a real store stands in."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import IO

START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    >>> 1024 <= free_port() <= 65535
    True
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_s3_server(
    log: IO[str] | None = None, key: str = "testing"
) -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server in a process of its own on a free port, and the variables that name it.

    Its own process, as a real store would be: GDAL holds the GIL while it opens a
    file, so a server thread in the caller's process could never answer that open.
    The variables (``AWS_ENDPOINT_URL``, credentials ``key`` / ``key``, a region) are
    returned, not set. Raises RuntimeError, naming ``log``, if it does not answer
    within :data:`START_TIMEOUT_S`.
    """
    port = free_port()
    out = log if log is not None else subprocess.DEVNULL
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                where = f" (see {log.name})" if log is not None else ""
                raise RuntimeError(f"moto's S3 server did not start{where}") from None
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    return server, env
