"""The service manager's end of sd_notify, for tests of READY, WATCHDOG and STOPPING."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


class NotifySocket:
    """The service manager's end: a unix datagram socket that collects messages."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.messages.append(data)
        return data

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no such message; got {self.messages}"
            msg = self.receive(min(left, 1.0))
            if msg is not None and predicate(msg):
                return msg

    def drain(self) -> list[str]:
        out = []
        while (msg := self.receive(0.0001)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()
