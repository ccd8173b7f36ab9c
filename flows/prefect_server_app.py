"""What the shared local Prefect server serves, and on which socket.

Prefect's API app as it comes, with two things a one-user server on loopback
needs and Prefect's own ``prefect server start`` does not give it here:

- a listening socket that asyncio gives ``TCP_NODELAY``: asyncio sets it only on
  sockets created with ``IPPROTO_TCP`` named, and without it every answer after the
  first on a kept-alive connection waits out the client's delayed ACK
  (bench/RESULTS.md, "Prefect's API round trips");
- requests that SQLite turned away retried inside the server after short waits
  (:class:`RetryWhenBusy`), not by the client after 2 s.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

BUSY_WAITS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Seconds before each retry of a request the app answered 503; after the last, the 503 goes out."""


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


class RetryWhenBusy:
    """ASGI middleware: a request the app answers with 503 is run again inside the server.

    Prefect's server answers 503 when SQLite turns a write away. On a local server
    that happens when a flow run starts while the server is still storing the events
    of one that just ended: the new run's transaction read before the other write
    committed, so SQLite refuses its write at once (``SQLITE_BUSY_SNAPSHOT``; waiting
    for the lock cannot help it). Prefect's client retries a 503 after 2 s, then 4 s,
    which back-to-back flow runs in one process (a batch of scenes, a watch) paid.
    Here the request runs again after :data:`BUSY_WAITS`; only after the last does the
    503 reach the client, whose own back-off then takes over.

    The request body is read whole first (the API takes small JSON bodies) and given
    to each attempt. A refused attempt's transaction was rolled back, so running it
    again is what the client's retry would do, and the exception Starlette raises again
    after its handler sent the 503 is dropped with it. Answers other than 503, streamed ones
    included, pass through as the app sends them; other scopes (lifespan, websockets)
    are not touched.
    """

    def __init__(self, app: App, waits: Sequence[float] = BUSY_WAITS):
        self.app = app
        self.waits = tuple(waits)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await _whole_body(receive)
        for wait in (*self.waits, None):
            attempt = _Attempt(send, may_retry=wait is not None)
            try:  # each attempt on its own copy of the scope: routing rewrites its paths in place
                await self.app(dict(scope), _replay(body, receive), attempt.send)
            except Exception:
                if not attempt.refused:  # Starlette raises again after its error handler answered
                    raise
            if not attempt.refused:
                return
            await asyncio.sleep(wait)


class _Attempt:
    """One run of the app: its answer passes through unless it is a 503 that will be retried."""

    def __init__(self, send: Send, may_retry: bool):
        self._send = send
        self._may_retry = may_retry
        self.refused = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.refused = self._may_retry and message["status"] == 503
        if not self.refused:
            await self._send(message)


async def _whole_body(receive: Receive) -> bytes:
    """The request's body, all of its messages joined (what a client sent before it went away)."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the connection says (its disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def create_app() -> App:
    """Prefect's API and UI app, its refused requests retried inside (uvicorn's app factory)."""
    from prefect.server.api.server import create_app as create_prefect_app

    return RetryWhenBusy(create_prefect_app())
