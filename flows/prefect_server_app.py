"""What the shared local Prefect server serves, and on which socket.

Prefect's API app as it comes, with two things a one-user server on loopback
needs and Prefect's own ``prefect server start`` does not give it here:

- a listening socket that asyncio gives ``TCP_NODELAY``: asyncio sets it only on
  sockets created with ``IPPROTO_TCP`` named, and without it every answer after the
  first on a kept-alive connection waits out the client's delayed ACK (~40 ms on
  Linux, on each of the ~8 requests a flow run makes; bench/RESULTS.md, "Prefect's
  API round trips");
- see :class:`RetryWhenBusy`.
"""

from __future__ import annotations

import socket


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound TCP socket whose accepted connections asyncio sets to ``TCP_NODELAY``.

    >>> sock = listening_socket()
    >>> sock.proto == socket.IPPROTO_TCP, sock.getsockname()[0]
    (True, '127.0.0.1')
    >>> sock.close()
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
