"""The object-storage bench's latency proxy: a round trip per request, bytes unchanged, in parallel."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.latency_proxy import LatencyProxy

RTT = 0.1


def _echo_server() -> socket.socket:
    """Answers every message with its bytes reversed, on as many connections as come."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data[::-1])

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


def _ask(port: int, messages: list[bytes]) -> tuple[list[bytes], float]:
    with socket.create_connection(("127.0.0.1", port)) as client:
        t0 = time.perf_counter()
        answers = []
        for message in messages:
            client.sendall(message)
            answers.append(client.recv(1 << 16))
        return answers, time.perf_counter() - t0


def test_each_request_on_a_connection_waits_one_round_trip_and_comes_back_unchanged() -> None:
    server = _echo_server()
    with LatencyProxy(server.getsockname()[1], RTT) as proxy:
        answers, seconds = _ask(proxy.port, [b"first", b"second", b"third"])
        assert proxy.requests == 3
    server.close()
    assert answers == [b"tsrif", b"dnoces", b"driht"]
    assert 3 * RTT <= seconds < 3 * RTT + 0.5


def test_requests_on_separate_connections_wait_together() -> None:
    server = _echo_server()
    with LatencyProxy(server.getsockname()[1], RTT) as proxy, ThreadPoolExecutor(4) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda k: _ask(proxy.port, [b"x%d" % k]), range(4)))
        seconds = time.perf_counter() - t0
    server.close()
    assert [answer for answer, _ in results] == [[b"%dx" % k] for k in range(4)]
    assert RTT <= seconds < 2 * RTT + 0.3  # one round trip for all four, not four
