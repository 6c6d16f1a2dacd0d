"""The whole gate against a real broker: an outage while 10,000 events happen, kill -9
mid-drain, the devices in the first status."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.common.base import DeviceHealth, Reading
from gated.app import App
from gated.clock import SystemClock
from gated.ledger import Ledger
from gated.mqtt.link import Backoff
from gated.storage import connect
from tests.support.daemon import Daemon
from tests.support.events import event
from tests.support.gate_process import GateProcess
from tests.support.mosquitto import Collector, Door, Mosquitto, publish
from tests.support.publishing import check_complete, has_seq
from tests.support.rig import make_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

CONFIG = """
[gate]
id = "g1"
site = "s1"

[storage]
path = "{db}"

[turnstile]
driver = "sim"

[prompter]
driver = "sim"

[mqtt]
urls = ["{url}"]
keepalive_s = 5
"""


def last_seq(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT MAX(seq) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_outage_while_10000_events_happen(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    door = Door(broker.port)
    config = make_config(tmp_path, mqtt={"urls": [door.url]})
    app = App(config, SystemClock())
    app.publisher.link.backoff = Backoff(0.05, 0.5)  # the broker is back soon: retry fast
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    col = Collector(broker.port, ["gated/s1/g1/+"])
    try:
        assert app.publisher.connected.wait(30)
        door.shut()
        broker.kill()
        wait_until(lambda: not app.publisher.connected.is_set())
        # 10,000 events while the broker is away: device failures and recoveries
        # (each failure also raises a device alarm, on T/alarm)
        done = threading.Event()
        flips = 6700  # a failure is 2 events (device + alarm), a recovery 1

        def flip(i: int) -> None:
            app.controller.put(Reading("device", DeviceHealth(i % 2 == 1, f"flip {i}"), "qr"))
            if i == flips - 1:
                app.controller.submit(done.set)

        for i in range(flips):
            flip(i)
        assert done.wait(120)
        total = last_seq(config.storage.path)
        assert total >= 10_000
        col.subscribed.clear()
        broker.start()
        assert col.subscribed.wait(30)
        door.open()
        col.wait_for(has_seq(total), timeout=180)
        check_complete(col.events(), total)
        topics = {t for t, _, _ in col.messages}
        assert {"gated/s1/g1/event", "gated/s1/g1/alarm", "gated/s1/g1/status"} <= topics
    finally:
        app.stop_event.set()
        runner.join(30)
        col.close()
        door.close()
        broker.kill()


def prefill(db: Path, n: int) -> None:
    conn = connect(db)
    ledger = Ledger(conn, site="s1", gate="g1", clock=SystemClock())
    ledger.start_boot()
    for i in range(n):
        ledger.append(event("guard_on" if i % 2 else "guard_off", guard="G7"))
    conn.close()


def test_kill_9_mid_drain_then_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    db = tmp_path / "gated.db"
    cfg = tmp_path / "gated.toml"
    cfg.write_text(CONFIG.format(db=db, url=broker.url))
    prefill(db, 8000)
    col = Collector(broker.port, ["gated/s1/g1/+"])
    daemon = Daemon("run", "-c", str(cfg))
    try:
        col.wait_for(lambda m: len(m) > 800, timeout=60)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.finish()
        got = len(col.events())
        assert got < 8000, "the drain finished before the kill; make the backlog bigger"
        conn = sqlite3.connect(db)
        left = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        conn.close()
        assert left > 0
        # the will says offline once the broker notices (keepalive 5 s)
        col.wait_for(
            lambda m: any(t.endswith("/status") and b'"offline"' in p for t, p, _ in m), 60
        )
        daemon = Daemon("run", "-c", str(cfg))
        col.wait_for(has_seq(8000), timeout=120)
        total = last_seq(db)
        col.wait_for(has_seq(total), timeout=60)
        events = col.events()
        check_complete(events, total)
        ids = {e["id"] for e in events}
        assert len(ids) == total  # duplicates (at least once) dedupe by id
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.finish(20)
        col.close()
        broker.kill()


def test_the_first_status_lists_every_configured_device(tmp_path: Path) -> None:
    """contracts §4: ``T/status.devices`` lists every configured device from the first status,
    before any of them reported anything; the screen lists the same ones."""
    broker = Mosquitto(tmp_path).start()
    col = Collector(broker.port, ["gated/s1/g1/status"])
    gate = GateProcess(tmp_path, mqtt_url=broker.url)  # turnstile, prompter, card, thermometer
    try:
        gate.start()
        col.wait_for(lambda m: len(m) >= 1, timeout=30)
        first = json.loads(col.messages[0][1])
        assert first["state"] == "online"
        devices = first["devices"]
        assert set(devices) == {"turnstile", "prompter", "card", "thermometer", "storage"}
        for health in devices.values():
            assert isinstance(health["ok"], bool) and isinstance(health["detail"], str)
        assert devices["card"]["ok"] is True
        screen = json.loads(gate.get("/api/state")[1])
        assert set(screen["devices"]) == set(devices)
    finally:
        gate.close()
        col.close()
        broker.kill()


def test_a_forged_log_line_in_a_req_never_reaches_the_log(tmp_path: Path) -> None:
    """A req once wrote ``INFO gated: #99 ...`` as a line of its own into the journal."""
    broker = Mosquitto(tmp_path).start()
    cfg = tmp_path / "gated.toml"
    cfg.write_text(CONFIG.format(db=tmp_path / "gated.db", url=broker.url))
    col = Collector(broker.port, ["gated/s1/g1/+"])
    daemon = Daemon("run", "-c", str(cfg))
    try:

        def results() -> list[dict[str, Any]]:
            with col.cond:
                return [json.loads(p) for t, p, _ in col.messages if t.endswith("/cmd_result")]

        sent = [0.0]

        def ready() -> bool:  # the status comes before the subscription: ping until answered
            if not results() and time.monotonic() - sent[0] > 0.5:
                sent[0] = time.monotonic()
                publish(broker.port, "gated/s1/g1/cmd/ping", {"req": f"ready-{sent[0]}"})
            return bool(results())

        wait_until(ready, "the daemon answering commands")
        col.wait_for(lambda m: all(r["ok"] for r in results()))
        first = len(results())
        forged = "p1\nINFO gated: #99 GRANTED 张* (card ******3D4E)"
        publish(broker.port, "gated/s1/g1/cmd/ping", {"req": forged})
        # mosquitto refuses C0 controls in a topic, not U+2028 (a line break to some readers)
        publish(broker.port, "gated/s1/g1/cmd/x\u2028INFO gated: 98", b"")
        publish(broker.port, "gated/s1/g1/cmd/ping", {"req": "after"})
        col.wait_for(lambda m: len(results()) >= first + 2)
        assert [r["ok"] for r in results()[first:]] == [False, True]
        assert daemon.stop() == 0
        lines = daemon.lines
        assert not any(re.match(r"(\S+ \S+ )?INFO gated: (#99|98)", line) for line in lines)
        assert any("req holds a control character" in line for line in lines), daemon.output()
        assert any("cmd/x\\u2028INFO gated: 98 ignored" in line for line in lines), lines
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
        col.close()
        broker.kill()
