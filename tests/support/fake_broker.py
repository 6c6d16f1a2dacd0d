"""A broker that misbehaves on purpose, at the TCP level, for what mosquitto will not do.

    FakeBroker("swallow")    CONNACK accepted, SUBACK, PINGRESP; every PUBLISH is kept
                             and never acknowledged (no PUBACK, no PUBREC)
    FakeBroker("blackhole")  accepts the TCP connection and never says a word
    FakeBroker("silent_v5")  no CONNACK to an MQTT 5 CONNECT; accepts 3.1.1

``connects`` holds the protocol level of every CONNECT seen (5, 4), ``publishes``
the topic of every PUBLISH. Both are guarded by ``cond``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


def _remaining_length(sock: socket.socket) -> int | None:
    value, shift = 0, 0
    for _ in range(4):
        b = sock.recv(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
    return None


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, next index) of the MQTT variable byte integer at ``data[at]``."""
    value, shift = 0, 0
    while True:
        b = data[at]
        at += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, at
        shift += 7


class FakeBroker:
    """One listening socket on 127.0.0.1; each connection is served by its own thread."""

    def __init__(self, mode: str):
        assert mode in ("swallow", "blackhole", "silent_v5")
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.cond = threading.Condition()
        self.accepted = 0
        self.connects: list[int] = []
        self.publishes: list[str] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.cond:
                self.accepted += 1
                self.conns.append(conn)
                self.cond.notify_all()
            if self.mode != "blackhole":
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        level = 4
        try:
            while True:
                head = conn.recv(1)
                if not head:
                    return
                n = _remaining_length(conn)
                body = _read_exact(conn, n) if n is not None else None
                if body is None:
                    return
                kind = head[0] >> 4
                if kind == 1:  # CONNECT: 2-byte length + "MQTT", then the level
                    level = body[6]
                    with self.cond:
                        self.connects.append(level)
                        self.cond.notify_all()
                    if self.mode == "silent_v5" and level == 5:
                        continue  # never answer
                    conn.sendall(b"\x20\x03\x00\x00\x00" if level == 5 else b"\x20\x02\x00\x00")
                elif kind == 3:  # PUBLISH: swallowed, never acknowledged
                    size = int.from_bytes(body[:2], "big")
                    with self.cond:
                        self.publishes.append(body[2 : 2 + size].decode())
                        self.cond.notify_all()
                elif kind == 8:  # SUBSCRIBE: grant QoS 1 to each filter
                    conn.sendall(self._suback(body, level))
                elif kind == 12:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _suback(body: bytes, level: int) -> bytes:
        at = 2
        if level == 5:
            props, at = _varint(body, at)
            at += props
        filters = 0
        while at < len(body):
            size = int.from_bytes(body[at : at + 2], "big")
            at += 2 + size + 1
            filters += 1
        payload = body[:2] + (b"\x00" if level == 5 else b"") + b"\x01" * filters
        return bytes([0x90, len(payload)]) + payload

    def wait_for(self, predicate: Callable[[FakeBroker], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate(self)`` holds."""
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(
                    f"fake broker: timed out ({self.accepted} accepted, {self.connects} CONNECTs,"
                    f" {len(self.publishes)} PUBLISHes)"
                )

    def close(self) -> None:
        self.server.close()
        with self.cond:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    c.close()
