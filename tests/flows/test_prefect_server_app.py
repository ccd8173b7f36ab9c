"""The shared Prefect server's socket and app: answers without delayed-ACK waits, busy retries kept inside."""

from __future__ import annotations

import asyncio
import socket

from flows.prefect_server_app import listening_socket


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
