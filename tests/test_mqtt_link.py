"""The link to the broker: 3.1.1 fallback, backoff, TLS files on a plain URL, a black hole."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Reading
from gated.mqtt_link import Backoff
from gated.publisher import Publisher
from tests.conftest import Rig
from tests.fake_broker import FakeBroker
from tests.mosquitto import Mosquitto
from tests.test_publisher import Gate
from tests.waiting import wait_until


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = Mosquitto(tmp_path).start()
    yield b
    b.kill()


def test_falls_back_to_mqtt_311(tmp_path: Path) -> None:
    """A broker that refuses MQTT 5 with "unsupported protocol version" gets 3.1.1."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    levels: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            head = conn.recv(4096)
            at = head.find(b"MQTT")
            level = head[at + 4] if at >= 0 and len(head) > at + 4 else 0
            levels.append(level)
            if level == 5:
                conn.sendall(bytes([0x20, 0x03, 0x00, 0x84, 0x00]))  # CONNACK 132
                conn.close()
            else:
                conn.sendall(bytes([0x20, 0x02, 0x00, 0x00]))  # CONNACK accepted
                time.sleep(2)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    gate = Gate(tmp_path, [f"mqtt://127.0.0.1:{port}"])
    try:
        client = gate.publisher.link.connect(threading.Event())
        assert client is not None
        assert levels[:2] == [5, 4]
        assert gate.publisher.link.protocol_name == "3.1.1"
        client.socket().close()  # type: ignore[union-attr]
    finally:
        server.close()
        gate.conn.close()


def test_a_silent_broker_is_not_taken_for_an_old_one(tmp_path: Path) -> None:
    """No CONNACK to MQTT 5 is a dead broker: every attempt is MQTT 5 again, never 3.1.1."""
    fake = FakeBroker("silent_v5")
    gate = Gate(tmp_path, [fake.url])
    link = gate.publisher.link
    link.connect_timeout_s = 0.2
    stop = threading.Event()
    got: list[Any] = []
    runner = threading.Thread(target=lambda: got.append(link.connect(stop)), daemon=True)
    runner.start()
    try:
        fake.wait_for(lambda f: len(f.connects) >= 3)
        assert set(fake.connects) == {5}
        assert "no CONNACK" in link.last_error
    finally:
        stop.set()
        runner.join(10)
        fake.close()
        gate.conn.close()
    assert got == [None]


def test_a_connack_does_not_reset_the_backoff_a_delivered_event_does(
    tmp_path: Path, broker: Mosquitto
) -> None:
    gate = Gate(tmp_path, [broker.url])
    backoff = gate.publisher.link.backoff
    backoff.current = backoff.high  # as after a run of failed connections
    gate.publisher.start()
    try:
        assert gate.publisher.connected.wait(30)
        assert backoff.current == backoff.high
        gate.append(1)
        wait_until(lambda: gate.publisher.delivered == 1, "the event delivered")
        assert backoff.current == backoff.low
    finally:
        gate.close()


def test_a_connection_that_stays_up_resets_the_backoff(tmp_path: Path, broker: Mosquitto) -> None:
    gate = Gate(tmp_path, [broker.url])
    gate.publisher.stable_s = 0.2
    backoff = gate.publisher.link.backoff
    backoff.current = backoff.high
    gate.publisher.start()
    try:
        wait_until(lambda: backoff.current == backoff.low, "the backoff reset")
        assert gate.publisher.sessions == 1 and gate.publisher.delivered == 0
    finally:
        gate.close()


def test_tls_files_with_a_plain_url_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not used\n")
    with caplog.at_level(logging.WARNING, logger="gated.mqtt_link"):
        gate = Gate(tmp_path, ["mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883"], ca_file=str(ca))
    gate.conn.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "mqtt.ca_file" in warnings[0] and "mqtt://127.0.0.1:1883" in warnings[0]


def test_decisions_go_on_while_the_broker_black_holes_the_publisher(tmp_path: Path) -> None:
    """A broker that accepts the TCP connection and never answers: the publisher waits for
    a CONNACK that never comes, and meanwhile the gate decides, commits and opens as usual.

    The publisher's one connection attempt is made to outlast the test, so every session
    below completes while it is stuck in it, before any CONNACK could arrive.
    """
    hole = FakeBroker("blackhole")
    rig = Rig(tmp_path, mqtt={"urls": [hole.url]})
    ctl = rig.controller
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    pub = Publisher.for_controller(rig.config, ctl, backoff=Backoff(0.05, 0.5))
    pub.link.connect_timeout_s = 600.0
    pub.start()
    sessions = 30
    try:
        hole.wait_for(lambda f: f.accepted == 1)  # the publisher is waiting for its CONNACK
        started = time.monotonic()
        for i in range(sessions):
            ctl.put(Reading("temp", 36.5, "thermometer"))
            ctl.put(Reading("card", "0A1B2C3D4E" if i % 3 else "FFFFFFFFFF", "card"))
            ctl.put(Reading("passage", True, "turnstile"))

        def decided() -> int:
            conn = sqlite3.connect(rig.config.storage.path)
            try:
                query = "SELECT COUNT(*) FROM events WHERE kind = 'decision'"
                return int(conn.execute(query).fetchone()[0])
            finally:
                conn.close()

        wait_until(lambda: decided() == sessions, f"{sessions} decisions committed", timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed < pub.link.connect_timeout_s
        # still the first attempt, still no session: nothing of the above waited for it
        assert hole.accepted == 1 and pub.sessions == 0 and not pub.connected.is_set()
        granted = [e for e in rig.stored() if e.get("decision") == "granted"]
        assert len(granted) == 20 and "open" in rig.turnstile.history
        conn = sqlite3.connect(rig.config.storage.path)
        # one read of both (the last passage may be committing meanwhile)
        waiting, stored = conn.execute(
            "SELECT (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM events)"
        ).fetchone()
        conn.close()
        assert waiting == stored  # every event waits for the broker
    finally:
        pub.stop()  # the stuck attempt ends on stop, it does not hang the daemon
        assert pub.thread is None
        stop.set()
        thread.join(10)
        hole.close()
        rig.conn.close()
