"""The shared Prefect server's socket and app: answers without delayed-ACK waits, busy retries kept inside."""

from __future__ import annotations

import asyncio
import socket

import httpx

from flows.prefect_server_app import RetryWhenBusy, listening_socket


def _nodelay_of_accepted_connection(sock: socket.socket) -> int:
    """TCP_NODELAY on the server side of one connection accepted by asyncio (as uvicorn accepts)."""

    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server_side = writer.get_extra_info("socket")
            accepted.set_result(server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_client, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            flag = await asyncio.wait_for(accepted, 30)
            writer.close()
        return flag

    return asyncio.run(main())


def test_connections_the_server_accepts_send_answers_without_waiting_for_acks() -> None:
    assert _nodelay_of_accepted_connection(listening_socket()) != 0


def test_a_socket_made_without_naming_tcp_would_have_waited() -> None:
    """The case the listening socket exists for: asyncio leaves such connections to Nagle."""
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.bind(("127.0.0.1", 0))
    assert _nodelay_of_accepted_connection(plain) == 0


class _BusyThenFine:
    """An ASGI app that answers 503 to its first ``busy`` requests, then 200 with the body it read."""

    def __init__(self, busy: int, raise_after_503: bool = False):
        self.busy = busy
        self.raise_after_503 = raise_after_503
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["path"] != "/api/flow_runs/":  # a mount that cut its prefix off in place last time
            raise AssertionError(f"scope handed on changed: {scope['path']}")
        scope["root_path"], scope["path"] = "/api", "/flow_runs/"  # as Starlette's Mount does
        message = await receive()
        self.bodies.append(message["body"])
        status = 503 if len(self.bodies) <= self.busy else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        for part in (b"answer to ", message["body"]):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if status == 503 and self.raise_after_503:  # as Starlette's ServerErrorMiddleware does
            raise RuntimeError("database is locked")


def _post(app, body: bytes) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            return await client.post("/api/flow_runs/", content=body)

    return asyncio.run(main())


def test_a_request_sqlite_turned_away_is_run_again_with_the_same_body_and_the_client_sees_only_the_answer():
    app = _BusyThenFine(busy=2)
    response = _post(RetryWhenBusy(app, waits=(0.0, 0.0, 0.0)), b'{"flow_id": "x"}')
    assert response.status_code == 200
    assert response.content == b'answer to {"flow_id": "x"}'
    assert app.bodies == [b'{"flow_id": "x"}'] * 3


def test_the_error_raised_again_after_a_503_was_sent_is_dropped_with_the_refused_attempt():
    app = _BusyThenFine(busy=1, raise_after_503=True)
    response = _post(RetryWhenBusy(app, waits=(0.0,)), b"{}")
    assert response.status_code == 200
    assert len(app.bodies) == 2


def test_after_the_last_wait_the_503_reaches_the_client_whose_own_backoff_takes_over():
    app = _BusyThenFine(busy=10)
    response = _post(RetryWhenBusy(app, waits=(0.0, 0.0)), b"{}")
    assert response.status_code == 503
    assert response.content == b"answer to {}"
    assert len(app.bodies) == 3


def test_a_body_sent_in_parts_is_given_whole_to_every_attempt():
    app = _BusyThenFine(busy=1)
    parts = iter([b'{"a": ', b"1}"])

    async def main() -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            part = next(parts, None)
            if part is None:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": part, "more_body": part != b"1}"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/api/flow_runs/", "headers": []}
        await RetryWhenBusy(app, waits=(0.0,))(scope, receive, send)
        return sent

    sent = asyncio.run(main())
    assert app.bodies == [b'{"a": 1}', b'{"a": 1}']
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200]
