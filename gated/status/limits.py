"""What the status screen lets in: open connections, the ``Host`` header, loop errors.

A board has a few hundred file descriptors to give; a screen that takes one per
connection without a bound runs the whole daemon out of them (the broker's reconnect
then fails with EMFILE). So the listening socket's protocol factory counts the open
connections, from this machine (the booth's screen) and from the rest apart, and
answers one more than ``limit`` with a 503 of its own, without aiohttp.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable
from typing import Any

from gated.status.auth import is_loopback

log = logging.getLogger(__name__)

#: Connections being answered 503 at once; past that one more is closed at once.
MAX_REFUSING = 32
#: Seconds a refused connection has to send its request before it gets its 503.
REFUSE_WAIT_S = 1.0


def busy_response(page: str) -> bytes:
    """The whole 503 answer of a connection past the limit, ``page`` named in it."""
    body = json.dumps({"error": f"too many connections to the {page}: try again"}).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Retry-After: 5\r\nConnection: close\r\nCache-Control: no-store\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


BUSY_RESPONSE = busy_response("status screen")


class ConnectionLimit:
    """The protocol factory of the screen's socket: at most ``limit`` connections open
    from other machines and ``limit`` from this one; one more gets a 503 and is closed."""

    def __init__(
        self,
        make: Callable[[], asyncio.Protocol],
        limit: int,
        refused: Callable[[], None],
        busy: bytes = BUSY_RESPONSE,
    ):
        self.make = make
        self.limit = limit
        self.refused = refused
        self.busy = busy
        self.open = {True: 0, False: 0}  # by "from this machine"
        self.refusing = 0

    def __call__(self) -> asyncio.Protocol:
        return _Counted(self)


class _Counted(asyncio.Protocol):
    """One connection: aiohttp's handler while there is room, a 503 when there is not."""

    def __init__(self, limit: ConnectionLimit):
        self.limit = limit
        self.inner: asyncio.Protocol | None = None
        self.local = False
        self.transport: Any = None
        self.head = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.local = is_loopback(str(peer[0])) if peer else False
        lim = self.limit
        if lim.open[self.local] < lim.limit:
            lim.open[self.local] += 1
            self.inner = lim.make()
            self.inner.connection_made(transport)
            return
        self.transport = transport
        lim.refused()
        if lim.refusing >= MAX_REFUSING:
            transport.abort()  # type: ignore[attr-defined]
            return
        lim.refusing += 1
        # Read the request first: closing on unread bytes resets the connection, and the
        # client would never see the 503.
        self.timer = asyncio.get_running_loop().call_later(REFUSE_WAIT_S, self._answer)

    def _answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.limit.busy)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        self.head = (self.head + data)[-4:]
        if b"\r\n\r\n" in self.head:
            self._answer()

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        self._answer()
        return None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.limit.open[self.local] -= 1
            self.inner.connection_lost(exc)
            return
        if self.timer is not None:
            self.timer.cancel()
            self.limit.refusing -= 1


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header, lower case and without port; None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return value[1:end]
    name, sep, port = value.rpartition(":")
    if not sep:
        name = value
    elif not port.isdigit() or ":" in name:
        return None
    name = name.rstrip(".")
    return name or None


def host_allowed(name: str, local: str, names: set[str]) -> bool:
    """Whether a request whose ``Host`` names ``name``, on a connection to the local
    address ``local``, is meant for this screen (DNS rebinding: an attacker's name
    that points at the gate is not)."""
    if name in names:
        return True
    if name == "localhost":
        return is_loopback(local)
    try:
        ip = ipaddress.ip_address(name)
        here = ipaddress.ip_address(local)
    except ValueError:
        return False
    if isinstance(here, ipaddress.IPv6Address) and here.ipv4_mapped is not None:
        here = here.ipv4_mapped
    return ip == here


class LoopErrors:
    """The status loop's exception handler: each kind of error logged once a minute.

    When the process runs out of file descriptors, asyncio fails ``accept()`` and
    reports it thousands of times a second (95 MB of log in 45 s); one line a minute,
    with the count of the ones not logged, says the same."""

    def __init__(
        self, clock: Callable[[], float], every_s: float = 60.0, page: str = "status screen"
    ):
        self.clock = clock
        self.every_s = every_s
        self.page = page
        self.last: dict[str, float] = {}
        self.skipped: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or f"error in the {self.page}'s loop")
        now = self.clock()
        if message in self.last and now - self.last[message] < self.every_s:
            self.skipped[message] = self.skipped.get(message, 0) + 1
            return
        first = message not in self.last
        self.last[message] = now
        skipped = self.skipped.pop(message, 0)
        more = f" ({skipped} more since the last report)" if skipped else ""
        exc = context.get("exception")
        if first and exc is not None and not isinstance(exc, OSError):
            loop.default_exception_handler(dict(context, message=message + more))
            return
        log.error("%s: %s%s%s", self.page, message, f": {exc}" if exc else "", more)
