"""Stopping the daemon: the relay ends de-energised, the outbox drains (docs/contracts.md §4)."""

from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from gated.app import App
from tests.support.daemon import EVENT_LINE
from tests.support.gate_process import GateProcess
from tests.support.gpio_turnstile import FIRE, RELAY, closed_fire_contact
from tests.support.mosquitto import Collector, Mosquitto, free_port
from tests.support.rig import CARDS, ZHANG, make_config
from tests.support.status_gate import PIN_G01
from tests.support.waiting import wait_until


def test_a_stop_during_an_open_grant_leaves_the_relay_de_energised(
    factory: Any, tmp_path: Path
) -> None:
    closed_fire_contact(factory)
    config = make_config(
        tmp_path,
        hardware={"pin_factory": "mock"},
        status={"listen": ""},
        policy={"require_temperature": False},
        turnstile={"driver": "gpio", "relay_pin": RELAY, "fire_pin": FIRE, "open_s": 30.0},
    )
    app = App(config)
    app.registry.apply([ZHANG], {"0A1B2C3D4E": CARDS["0A1B2C3D4E"]}, "2026-01-01T00:00:00Z")
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        app.controller.submit(lambda: None).result(timeout=10)  # every device started
        opened = app.controller.submit(lambda: app.controller.desk.open_once("screen", guard="G1"))
        opened.result(timeout=10)
        wait_until(lambda: factory.pin(RELAY).state is True, "the relay energised")
    finally:
        app.stop_event.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert factory.pin(RELAY).state is False  # the grant was still open: now locked


# -- a clean stop drains the outbox (contracts §4) --------------------------------------------

ROOT = "gated/s1/g1"
#: Tamper on, off, on...: each one an event (an alarm, its clear), decided within ms.
BURST = 20
#: Mode changes a guard makes on the screen just before the stop.
CHANGES = 6


def tamper_burst(t: float) -> list[dict[str, Any]]:
    return [{"t": t + i * 0.002, "tamper": i % 2 == 0} for i in range(BURST)]


class Screen:
    """The guard's screen of a gate process, spoken to over HTTP."""

    def __init__(self, port: int):
        self.port = port
        status, headers, body = self.request(
            "POST", "/api/guard/login", {"guard": "G01", "pin": PIN_G01}
        )
        assert status == 200, body
        self.cookie = headers["set-cookie"].split(";")[0]
        self.csrf = json.loads(body)["csrf"]

    def request(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            h = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=json.dumps(body).encode(), headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def mode(self, mode: str) -> None:
        """Set the mode; answered once its event is committed."""
        h = {"Cookie": self.cookie, "X-CSRF-Token": self.csrf}
        status, _, body = self.request("POST", "/api/mode", {"mode": mode}, h)
        assert status == 200, body


def outbox(gate: GateProcess) -> int:
    conn = sqlite3.connect(gate.db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def waiting_kinds(gate: GateProcess) -> list[str]:
    conn = sqlite3.connect(gate.db)
    try:
        sql = "SELECT e.kind FROM outbox o JOIN events e ON e.seq = o.seq ORDER BY o.seq"
        return [kind for (kind,) in conn.execute(sql)]
    finally:
        conn.close()


def received_seqs(messages: list[tuple[str, bytes, bool]]) -> set[int]:
    return {json.loads(p)["seq"] for t, p, _ in messages if t.endswith(("/event", "/alarm"))}


def logged(n: int) -> Any:
    """A predicate for :meth:`Daemon.wait_for`: ``n`` committed events logged."""
    return lambda lines: sum(1 for line in lines if EVENT_LINE.search(line)) >= n


def online(messages: list[tuple[str, bytes, bool]]) -> bool:
    return any(t.endswith("/status") and b'"online"' in p for t, p, _ in messages)


@pytest.mark.slow
def test_sigterm_right_after_events_were_decided_delivers_every_one(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    col = Collector(broker.port, [f"{ROOT}/event", f"{ROOT}/alarm", f"{ROOT}/status"])
    gate = GateProcess(tmp_path, mqtt_url=broker.url)
    try:
        gate.start()
        col.wait_for(online, timeout=30)
        screen = Screen(gate.port)
        for i in range(CHANGES):
            screen.mode("guard_only" if i % 2 == 0 else "normal")
        gate.stop()  # SIGTERM as soon as the last change is committed; exit code 0
        committed = {e["seq"] for e in gate.ledger()}
        assert len(committed) > CHANGES  # the guard's login and the mode changes
        assert outbox(gate) == 0  # nothing left behind for the next start
        col.wait_for(lambda m: committed <= received_seqs(m), timeout=20)
        late = Collector(broker.port, [f"{ROOT}/status"], client_id="late")
        try:
            late.wait_for(lambda m: len(m) >= 1, timeout=20)
            _, payload, retained = late.messages[0]
            status = json.loads(payload)
            assert retained and status["state"] == "offline" and status["backlog"] == 0
        finally:
            late.close()
    finally:
        gate.close()
        col.close()
        broker.kill()


@pytest.mark.slow
def test_sigterm_with_the_broker_unreachable_keeps_the_events_and_exits(
    tmp_path: Path,
) -> None:
    gate = GateProcess(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")  # nobody there
    gate.play(tamper_burst(1.0))
    try:
        gate.start()
        assert gate.daemon is not None
        gate.daemon.wait_for(logged(BURST))
        gate.stop()  # exits 0 (a daemon that hangs is killed and the test fails)
        assert outbox(gate) == len(gate.ledger()) >= BURST  # all still there
    finally:
        gate.close()


@pytest.mark.slow
def test_sigterm_with_a_stalled_broker_gives_up_the_drain_and_exits(tmp_path: Path) -> None:
    """The broker holds the connection and never answers: the drain ends after its 2 s."""
    broker = Mosquitto(tmp_path).start()
    col = Collector(broker.port, [f"{ROOT}/status"])
    gate = GateProcess(tmp_path, mqtt_url=broker.url)
    assert broker.proc is not None
    try:
        gate.start()
        col.wait_for(online, timeout=30)
        broker.proc.send_signal(signal.SIGSTOP)
        Screen(gate.port)  # the guard logs in: a guard_on event
        assert gate.daemon is not None
        gate.daemon.wait_for(lambda lines: any("guard_on" in line for line in lines))
        code = gate.daemon.stop(timeout=20)  # drain 2 s, offline 2 s, with room to spare
        assert code == 0, gate.daemon.output()
        assert waiting_kinds(gate) == ["guard_on"]  # the guard's login waits for the next start
        assert "not confirmed by the broker" in gate.daemon.output()
    finally:
        if broker.proc is not None:
            broker.proc.send_signal(signal.SIGCONT)
        gate.close()
        col.close()
        broker.kill()
