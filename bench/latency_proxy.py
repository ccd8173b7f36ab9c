"""A TCP proxy on loopback that adds one round trip of latency to every request it passes on.

An S3-protocol server on loopback answers in well under a millisecond; a real object
store a few tens of milliseconds before the first byte. Put this in front of the server
(point ``AWS_ENDPOINT_URL`` at :attr:`LatencyProxy.url`) and each request, on every
connection, waits ``rtt`` seconds before it is sent on: requests made together (one per
connection) wait together, requests made one after another wait one after another, as
they would over a network. Bytes pass unchanged; a request counts as new when the client
sends after the server last answered on that connection (so ``Expect: 100-continue``
costs a second round trip, as it does over a network).

>>> import socket, threading, time
>>> server = socket.create_server(("127.0.0.1", 0))
>>> def echo():
...     conn, _ = server.accept()
...     conn.sendall(conn.recv(16)); conn.close()
>>> threading.Thread(target=echo, daemon=True).start()
>>> with LatencyProxy(server.getsockname()[1], rtt=0.05) as proxy:
...     client = socket.create_connection(("127.0.0.1", proxy.port))
...     t0 = time.perf_counter(); client.sendall(b"ping"); answer = client.recv(16)
...     waited = time.perf_counter() - t0; client.close()
>>> answer, waited >= 0.05
(b'ping', True)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class LatencyProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream``, each request delayed by ``rtt`` seconds.

    Runs its own event loop on a daemon thread; use it as a context manager.
    """

    def __init__(self, upstream: int, rtt: float) -> None:
        self.upstream = upstream
        self.rtt = rtt
        self.port = 0
        self.requests = 0
        """Requests delayed so far (all connections)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        """The endpoint to hand clients instead of the server's."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_out.close()
            return
        answered = asyncio.Event()
        answered.set()  # the first bytes a client sends start a request

        async def requests() -> None:
            while data := await client_in.read(1 << 16):
                if answered.is_set():
                    answered.clear()
                    self.requests += 1
                    await asyncio.sleep(self.rtt)
                server_out.write(data)
                await server_out.drain()
            server_out.write_eof()

        async def answers() -> None:
            while data := await server_in.read(1 << 16):
                answered.set()
                client_out.write(data)
                await client_out.drain()
            client_out.close()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(requests(), answers())
        for writer in (server_out, client_out):
            writer.close()
