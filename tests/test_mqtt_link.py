"""The link to the broker: 3.1.1 fallback, backoff, TLS files on a plain URL, a black hole."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.common.base import Reading
from gated.mqtt.link import Backoff
from gated.mqtt.publisher import Publisher
from tests.support.fake_broker import FakeBroker
from tests.support.mosquitto import Collector, Mosquitto, pump
from tests.support.publishing import Gate
from tests.support.rig import Rig
from tests.support.waiting import wait_until


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class OldBroker:
    """A TCP proxy in front of a real broker that closes on MQTT 5, as RabbitMQ 3.x does.

    It reads the first packet, a CONNECT, and looks at its protocol level: 5 gets the
    socket closed with no CONNACK; 4 (3.1.1) is forwarded, and from then on every byte
    both ways. ``levels`` is the level of every CONNECT seen, in order. ``refuse()``
    closes the listening socket (connections are refused: an outage), ``reopen()``
    listens on the same port again.
    """

    def __init__(self, target_port: int):
        self.target = target_port
        self.levels: list[int] = []
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._listen(self.server)

    def _listen(self, server: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head = _read_exact(conn, 1)
            length, shift, raw = 0, 0, b""
            while True:
                b = _read_exact(conn, 1)
                raw += b
                length |= (b[0] & 0x7F) << shift
                shift += 7
                if not b[0] & 0x80:
                    break
            body = _read_exact(conn, length)
        except OSError:
            conn.close()
            return
        level = body[6] if head[0] >> 4 == 1 and len(body) > 6 else 0
        with self.lock:
            self.levels.append(level)
        if level != 4:
            conn.close()  # no CONNACK, no reason: the socket just goes
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        with self.lock:
            self.conns.append(upstream)
        upstream.sendall(head + raw + body)
        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    def seen(self) -> list[int]:
        with self.lock:
            return list(self.levels)

    def refuse(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept(): nobody listens
        self.server.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def reopen(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        self._listen(self.server)

    def close(self) -> None:
        self.refuse()


@pytest.fixture
def old_broker(broker: Mosquitto) -> Any:
    proxy = OldBroker(broker.port)
    yield proxy
    proxy.close()


def _connect_within(link: Any, seconds: float = 30.0) -> Any:
    """``link.connect`` that gives up (None) after ``seconds``, so a failure cannot hang."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return link.connect(stop)
    finally:
        timer.cancel()


def _statuses(col: Collector) -> list[dict[str, Any]]:
    with col.cond:
        return [json.loads(p) for t, p, _ in col.messages if t.endswith("/status") and p]


def test_auto_falls_back_to_311_when_the_broker_closes_on_mqtt_5(
    tmp_path: Path, broker: Mosquitto, old_broker: OldBroker
) -> None:
    """RabbitMQ 3.x closes the socket on an MQTT 5 CONNECT: the events still arrive, over 3.1.1."""
    col = Collector(broker.port, ["gated/#"])
    gate = Gate(tmp_path, [old_broker.url])
    assert gate.config.mqtt.protocol == "auto"  # the default
    gate.append(5)
    gate.publisher.start()
    try:
        col.wait_for(lambda m: len(col.events()) >= 5, timeout=30)
        assert sorted(e["seq"] for e in col.events())[:5] == [1, 2, 3, 4, 5]
        assert old_broker.seen()[:2] == [5, 4]
        wait_until(lambda: gate.backlog() == 0, "the outbox drained")
        col.wait_for(lambda m: any(s.get("state") == "online" for s in _statuses(col)))
        online = [s for s in _statuses(col) if s.get("state") == "online"]
        assert online[-1]["protocol"] == "3.1.1"
    finally:
        gate.close()
        col.close()


def test_the_protocol_that_worked_is_remembered_until_an_attempt_fails(
    tmp_path: Path, broker: Mosquitto, old_broker: OldBroker, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate(tmp_path, [old_broker.url])
    link = gate.publisher.link
    stop = threading.Event()
    try:
        first = _connect_within(link)
        assert first is not None and link.protocol_name == "3.1.1"
        assert old_broker.seen() == [5, 4]
        first.disconnect()

        # the next connection to that URL starts with 3.1.1: no MQTT 5 CONNECT first
        again = _connect_within(link)
        assert again is not None and link.protocol_name == "3.1.1"
        assert old_broker.seen() == [5, 4, 4]
        again.disconnect()

        # an outage: connections refused; that is no reason to think the broker is old
        old_broker.refuse()
        attempts = link.attempts
        got: list[Any] = []
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gated.mqtt.link"):
            runner = threading.Thread(target=lambda: got.append(link.connect(stop)), daemon=True)
            runner.start()
            threading.Timer(60, stop.set).start()  # a failure below must not hang the test
            wait_until(lambda: link.attempts >= attempts + 3, "three refused attempts")
            assert "refused" in link.last_error.lower()
            messages = [r.getMessage() for r in caplog.records]
            assert not any("trying MQTT 3.1.1" in m for m in messages), messages
            assert any("MQTT 3.1.1 failed" in m for m in messages), messages
            seen = len(old_broker.seen())
            old_broker.reopen()
            runner.join(30)
        assert got and got[0] is not None
        # the failure made the link forget: MQTT 5 first again, then 3.1.1
        assert old_broker.seen()[seen:] == [5, 4]
        assert link.protocol_name == "3.1.1"
        got[0].disconnect()
    finally:
        stop.set()
        gate.conn.close()


def test_protocol_5_does_not_fall_back_and_says_why(
    tmp_path: Path, broker: Mosquitto, old_broker: OldBroker, caplog: pytest.LogCaptureFixture
) -> None:
    col = Collector(broker.port, ["gated/#"])
    gate = Gate(tmp_path, [old_broker.url], protocol="5")
    gate.append(1)
    with caplog.at_level(logging.WARNING, logger="gated.mqtt.link"):
        gate.publisher.start()
        try:
            wait_until(lambda: len(old_broker.seen()) >= 3, "three MQTT 5 attempts")
            assert set(old_broker.seen()) == {5}
            assert gate.publisher.delivered == 0 and gate.publisher.sessions == 0
            assert gate.backlog() == 1  # the event waits in the outbox
        finally:
            gate.close()
    assert not col.events()
    col.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "closed the connection to an MQTT 5 CONNECT before any CONNACK" in w
        and 'mqtt.protocol = "5"' in w
        and '"3.1.1"' in w
        for w in warnings
    ), warnings


def test_protocol_311_speaks_only_311(
    tmp_path: Path, broker: Mosquitto, old_broker: OldBroker
) -> None:
    gate = Gate(tmp_path, [old_broker.url], protocol="3.1.1")
    try:
        client = _connect_within(gate.publisher.link)
        assert client is not None and gate.publisher.link.protocol_name == "3.1.1"
        assert old_broker.seen() == [4]
        client.disconnect()
    finally:
        gate.conn.close()


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
    with caplog.at_level(logging.WARNING, logger="gated.mqtt.link"):
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
