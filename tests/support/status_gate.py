"""A gate in this process, its status screen served over real HTTP on a free port.

The App runs on sim drivers on a thread of its own; readings go into the controller's
queue exactly as a driver's ``emit`` puts them; the ledger is read back through a
connection of the test's own.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.common.base import Reading
from gated.app import App
from gated.status.auth import hash_pin
from tests.support.ledger_file import ledger_events, wait_for_event
from tests.support.mosquitto import free_port
from tests.support.rig import CARDS, LI, ZHANG, make_config
from tests.support.waiting import wait_until

PIN_G01 = "4321"
SHARED_PIN = "2468"
HASH_G01 = hash_pin(PIN_G01)
HASH_SHARED = hash_pin(SHARED_PIN)


class Gate:
    """A gate daemon in this process: App on sim drivers, status screen on a free port."""

    def __init__(
        self,
        tmp_path: Path,
        port: int | None = None,
        mqtt: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
        **status: Any,
    ):
        self.tmp_path = tmp_path
        self.port = port or free_port()
        status = {
            "listen": f"127.0.0.1:{self.port}",
            "guards": {"G01": HASH_G01},
            "guard_pin_hash": HASH_SHARED,
            "lockout_after": 3,
            "lockout_s": 300,
            **status,
        }
        self.config = make_config(
            tmp_path,
            status=status,
            policy={"guard_timeout_s": 120, "session_timeout_s": 5, **(policy or {})},
            card={"driver": "sim"},
            thermometer={"driver": "sim"},
            mqtt=mqtt or {},
        )
        self.app = App(self.config)
        self.app.registry.apply([ZHANG, LI], CARDS, "2026-01-01T00:00:00Z")
        self.thread = threading.Thread(target=self.app.run, daemon=True)
        self.thread.start()
        wait_until(self._up, what="the status screen")

    def _up(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, kind: str, value: Any = True) -> None:
        """A reading, as a driver emits it."""
        self.app.controller.put(Reading(kind, value, kind))

    def arrive(self, temp: float | None, card: str | None) -> None:
        """One person: a temperature reading, then a card."""
        if temp is not None:
            self.put("temp", temp)
        if card is not None:
            self.put("card", card)

    def connection(self, via: str = "127.0.0.1") -> http.client.HTTPConnection:
        """A connection to the screen at the local address ``via`` (HTTPS when it serves TLS)."""
        cert = self.config.status.tls_cert_file
        if cert is None:
            return http.client.HTTPConnection(via, self.port, timeout=15)
        context = ssl.create_default_context(cafile=str(cert))
        return http.client.HTTPSConnection(via, self.port, timeout=15, context=context)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        via: str = "127.0.0.1",
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.connection(via)
        try:
            h = dict(headers or {})
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path)

    def state(self, cookie: str = "") -> dict[str, Any]:
        status, _, body = self.request("GET", "/api/state", headers={"Cookie": cookie})
        assert status == 200
        out: dict[str, Any] = json.loads(body)
        return out

    def login(self, guard: str = "G01", pin: str = PIN_G01) -> tuple[str, str]:
        """Log in; returns (cookie header, csrf token)."""
        status, headers, body = self.request(
            "POST", "/api/guard/login", {"guard": guard, "pin": pin}
        )
        assert status == 200, body
        cookie = headers["set-cookie"].split(";")[0]
        return cookie, json.loads(body)["csrf"]

    def post(self, path: str, body: Any, cookie: str, csrf: str, **headers: str) -> tuple[int, Any]:
        h = {"Cookie": cookie, "X-CSRF-Token": csrf, **headers}
        status, _, raw = self.request("POST", path, body, headers=h)
        return status, json.loads(raw) if raw else None

    def ledger(self) -> list[dict[str, Any]]:
        return ledger_events(self.config.storage.path)

    def wait_event(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        return wait_for_event(self.config.storage.path, match, what)

    def stop(self) -> None:
        self.app.stop_event.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()
