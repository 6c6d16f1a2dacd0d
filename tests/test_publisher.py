"""The publisher against a real mosquitto: order, outages, a killed broker, failover, TLS, ACL."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from gated.clock import FakeClock
from gated.ledger import Ledger
from gated.mqtt_link import Backoff
from gated.publisher import Publisher
from gated.storage import connect
from tests.conftest import make_config
from tests.mosquitto import Collector, Door, Mosquitto, free_port, publish
from tests.waiting import wait_until

PERSON = {
    "id": "P1",
    "name": "Zhang Wei",
    "household": "H1",
    "id_number": "320623199001011234",
    "unit": "1-101",
    "category": "resident",
}


class Gate:
    """A ledger (the test plays the controller) and a publisher on the same file."""

    def __init__(self, tmp_path: Path, urls: list[str], **mqtt_cfg: Any):
        self.config = make_config(tmp_path, mqtt={"urls": urls, **mqtt_cfg})
        self.conn = connect(self.config.storage.path)
        self.ledger = Ledger(self.conn, site="s1", gate="g1", clock=FakeClock())
        self.ledger.start_boot()
        self.publisher = Publisher(self.config, backoff=Backoff(0.05, 0.5))

    def append(self, n: int) -> None:
        for i in range(n):
            if i % 10 == 9:
                self.ledger.append({"kind": "alarm", "alarm": "fever", "person": dict(PERSON)})
            else:
                self.ledger.append({"kind": "device", "device": "card", "ok": i % 2 == 0})

    def backlog(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self.publisher.stop()
        self.conn.close()


def check_complete(events: list[dict[str, Any]], last: int, start: int = 1) -> None:
    """Every seq 1..last arrived; first arrivals are in seq order; duplicates share the id."""
    first: dict[int, str] = {}
    order = []
    for e in events:
        if e["seq"] in first:
            assert first[e["seq"]] == e["id"]
            continue
        first[e["seq"]] = e["id"]
        order.append(e["seq"])
    assert order == list(range(start, last + 1))


def has_seq(last: int) -> Any:
    """A predicate for :meth:`Collector.wait_for`: an event with ``seq == last`` arrived.

    It looks only at messages it has not seen yet: the collector calls it per message.
    """
    state = {"seen": 0, "found": False}

    def pred(msgs: list[tuple[str, bytes, bool]]) -> bool:
        for t, p, _ in msgs[state["seen"] :]:
            if t.endswith(("/event", "/alarm")) and json.loads(p)["seq"] == last:
                state["found"] = True
        state["seen"] = len(msgs)
        return state["found"]

    return pred


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = Mosquitto(tmp_path).start()
    yield b
    b.kill()


def test_drains_in_order_with_status_and_masked_pii(tmp_path: Path, broker: Mosquitto) -> None:
    col = Collector(broker.port, ["gated/s1/g1/#"])
    gate = Gate(tmp_path, [broker.url])
    try:
        gate.append(30)
        gate.publisher.start()
        col.wait_for(has_seq(30))
        wait_until(lambda: gate.backlog() == 0)
        events = col.events()
        check_complete(events, 30)
        alarm_topics = {t for t, p, _ in col.messages if t.endswith("/alarm")}
        assert alarm_topics == {"gated/s1/g1/alarm"}
        fever = next(e for e in events if e["kind"] == "alarm")
        assert fever["person"]["id_number"] == "3206**********1234"
        assert fever["person"]["name"] != "Zhang Wei"
        status = [json.loads(p) for t, p, _ in col.messages if t == "gated/s1/g1/status"]
        assert status[0]["state"] == "online"
        assert {"ts", "version", "mode", "devices", "backlog"} <= set(status[0])
        assert isinstance(status[0]["clock_synced"], bool)  # a Pi has no battery clock
        # events committed while connected follow within the polling interval
        gate.append(5)
        col.wait_for(has_seq(35))
    finally:
        gate.close()
        col.close()
    # clean stop: retained offline
    col2 = Collector(broker.port, ["gated/s1/g1/status"], client_id="late")
    col2.wait_for(lambda m: any(json.loads(p)["state"] == "offline" and r for _, p, r in m))
    col2.close()


def test_broker_down_for_10000_events_then_back(tmp_path: Path, broker: Mosquitto) -> None:
    door = Door(broker.port)
    gate = Gate(tmp_path, [door.url])
    door.shut()
    broker.stop()
    gate.publisher.start()
    try:
        gate.append(10_000)
        assert gate.backlog() == 10_000
        broker.start()
        col = Collector(broker.port, ["gated/s1/g1/+"])
        door.open()
        col.wait_for(has_seq(10_000), timeout=120)
        wait_until(lambda: gate.backlog() == 0)
        check_complete(col.events(), 10_000)
        col.close()
    finally:
        gate.close()
        door.close()


def test_broker_killed_mid_drain(tmp_path: Path, broker: Mosquitto) -> None:
    """Every row the killed broker had not acknowledged arrives after it comes back, in order.

    What the broker acknowledged but had not yet forwarded when it was SIGKILLed is the
    broker's loss (docs/mqtt.md: run the central broker with persistence); the gate's
    promise is that only acknowledged rows leave the outbox.
    """
    door = Door(broker.port)
    gate = Gate(tmp_path, [door.url])
    gate.append(6000)
    col = Collector(broker.port, ["gated/s1/g1/+"])
    gate.publisher.start()
    try:
        col.wait_for(lambda m: len(m) > 1000)
        door.shut()
        broker.kill()
        wait_until(lambda: not gate.publisher.connected.is_set())
        unacked = [s for (s,) in gate.conn.execute("SELECT seq FROM outbox ORDER BY seq")]
        assert unacked and unacked[-1] == 6000
        col.subscribed.clear()
        broker.start()
        assert col.subscribed.wait(30)  # our subscriber is back before the gate is let in
        door.open()
        col.wait_for(has_seq(6000), timeout=120)
        wait_until(lambda: gate.backlog() == 0)
        events = col.events()
        missing = sorted(set(unacked) - {e["seq"] for e in events})
        assert not missing, (missing[:3], len(missing))
        check_complete([e for e in events if e["seq"] >= unacked[0]], 6000, start=unacked[0])
        assert gate.publisher.sessions >= 2
    finally:
        gate.close()
        col.close()
        door.close()


def test_failover_from_a_dead_first_url(tmp_path: Path, broker: Mosquitto) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    gate = Gate(tmp_path, [dead, broker.url])
    col = Collector(broker.port, ["gated/s1/g1/+"])
    gate.append(50)
    gate.publisher.start()
    try:
        col.wait_for(has_seq(50))
        check_complete(col.events(), 50)
        assert str(gate.publisher.link.connected_url) == broker.url
    finally:
        gate.close()
        col.close()


def test_pii_none_drops_names_and_temperatures(tmp_path: Path, broker: Mosquitto) -> None:
    gate = Gate(tmp_path, [broker.url], pii="none")
    col = Collector(broker.port, ["gated/s1/g1/alarm"])
    gate.append(10)
    gate.publisher.start()
    try:
        col.wait_for(has_seq(10))
        person = col.events()[0]["person"]
        assert person == {"id": "P1", "household": "H1", "category": "resident"}
    finally:
        gate.close()
        col.close()


# -- TLS --------------------------------------------------------------------------------


def _cert(
    subject: str, key: Any, issuer: x509.Name | None, ca_key: Any, ca: bool, san: bool = False
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        import ipaddress

        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(ca_key, hashes.SHA256())


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    d.mkdir(exist_ok=True)
    out = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, ca_key, True)
    out["ca"] = d / "ca.crt"
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, san in [("server", True), ("client", False)]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"{name}-g1", key, ca.subject, ca_key, False, san)
        out[name] = d / f"{name}.crt"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[name + "_key"] = d / f"{name}.key"
        out[name + "_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return out


def test_tls_with_a_ca_made_by_the_test(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls_port, plain_port = free_port(), free_port()
    extra = (
        f"listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
        f"listener {tls_port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki['server']}\n"
        f"keyfile {pki['server_key']}\nrequire_certificate true\n"
    )
    b = Mosquitto(tmp_path, extra=extra, port=plain_port).start()
    col = Collector(plain_port, ["gated/s1/g1/+"])
    gate = Gate(
        tmp_path,
        [f"mqtts://127.0.0.1:{tls_port}"],
        ca_file=str(pki["ca"]),
        cert_file=str(pki["client"]),
        key_file=str(pki["client_key"]),
    )
    try:
        gate.append(20)
        gate.publisher.start()
        col.wait_for(has_seq(20))
        check_complete(col.events(), 20)
    finally:
        gate.close()
        col.close()
        b.kill()


def test_tls_refuses_a_broker_of_another_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\nallow_anonymous true\ncafile {pki['ca']}\n"
        f"certfile {pki['server']}\nkeyfile {pki['server_key']}\n"
    )
    b = Mosquitto(tmp_path, extra=extra, port=tls_port).start()
    gate = Gate(tmp_path, [f"mqtts://127.0.0.1:{tls_port}"], ca_file=str(other["ca"]))
    try:
        gate.append(3)
        gate.publisher.start()
        wait_until(lambda: gate.publisher.link.attempts >= 2)
        assert "certificate verify failed" in gate.publisher.link.last_error
        assert gate.backlog() == 3
    finally:
        gate.close()
        b.kill()


# -- the documented ACL -------------------------------------------------------------------

ACL = """\
# central side: reads everything, writes commands and the registry
user central
topic readwrite gated/#
topic readwrite homeassistant/#

# every gate: user name = gate id, client id anything
pattern write gated/+/%u/status
pattern write gated/+/%u/event
pattern write gated/+/%u/alarm
pattern write gated/+/%u/cmd_result
pattern read gated/+/%u/cmd/+
pattern read gated/+/registry
pattern write homeassistant/+/%u/+/config
"""


def acl_broker(tmp_path: Path) -> tuple[Mosquitto, dict[str, Path]]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    pw = tmp_path / "passwd"
    lines = []
    files = {}
    for user in ("g1", "g2", "central"):
        files[user] = secrets / user
        files[user].write_text(f"pw-{user}\n")
        lines.append(f"{user}:pw-{user}")
    pw.write_text("\n".join(lines) + "\n")
    subprocess_run(["mosquitto_passwd", "-U", str(pw)])
    (tmp_path / "acl").write_text(ACL)
    port = free_port()
    extra = (
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {pw}\nacl_file {tmp_path / 'acl'}\n"
    )
    return Mosquitto(tmp_path, extra=extra, port=port).start(), files


def subprocess_run(args: list[str]) -> None:
    import subprocess

    subprocess.run(args, check=True, capture_output=True)


def test_acl_lets_a_gate_write_only_its_own_topics(tmp_path: Path) -> None:
    b, files = acl_broker(tmp_path)
    central = Collector(b.port, ["gated/#"], username="central", password="pw-central")
    try:
        # g2's client tries to write g1's event topic: PUBACK "not authorized" (MQTT 5).
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="g2-raw", protocol=mqtt.MQTTv5)
        c.username_pw_set("g2", "pw-g2")
        codes: dict[int, Any] = {}
        c.on_publish = lambda cl, u, mid, rc, p: codes.__setitem__(mid, rc)
        up = threading.Event()
        c.on_connect = lambda *a: up.set()
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        assert up.wait(20)
        bad = c.publish("gated/s1/g1/event", b'{"seq":1}', qos=1)
        good = c.publish("gated/s1/g2/event", b'{"seq":7}', qos=1)
        wait_until(lambda: bad.mid in codes and good.mid in codes)
        assert codes[bad.mid].is_failure  # 135: not authorized
        assert not codes[good.mid].is_failure
        c.loop_stop()
        c.disconnect()
        central.wait_for(lambda m: any(t == "gated/s1/g2/event" for t, _, _ in m))
        assert not any(t == "gated/s1/g1/event" for t, _, _ in central.messages)

        # g2 subscribes to g1's commands too: mosquitto grants the subscription but
        # never delivers what the ACL does not let it read.
        spy = Collector(
            b.port,
            ["gated/s1/g1/cmd/+", "gated/s1/g2/cmd/+"],
            "g2-spy",
            username="g2",
            password="pw-g2",
        )
        publish(
            b.port, "gated/s1/g1/cmd/open", {"req": "a"}, username="central", password="pw-central"
        )
        publish(
            b.port, "gated/s1/g2/cmd/ping", {"req": "b"}, username="central", password="pw-central"
        )
        spy.wait_for(lambda m: any(t == "gated/s1/g2/cmd/ping" for t, _, _ in m))
        assert [t for t, _, _ in spy.messages] == ["gated/s1/g2/cmd/ping"]
        spy.close()

        # the gate itself, as g1 with its password file, publishes fine
        gate = Gate(tmp_path, [b.url], username="g1", password_file=str(files["g1"]))
        gate.append(5)
        gate.publisher.start()
        central.wait_for(has_seq(5))
        gate.close()

        # a gate misconfigured to another gate's id: the broker refuses, nothing is lost
        cfg_dir = tmp_path / "wrong"
        cfg_dir.mkdir()
        wrong = Gate(cfg_dir, [b.url], username="g2", password_file=str(files["g2"]))
        wrong.append(3)
        wrong.publisher.start()
        wait_until(lambda: wrong.publisher.refused >= 1)
        assert wrong.backlog() == 3
        wrong.close()
    finally:
        central.close()
        b.kill()


def test_outbox_rows_are_deleted_only_after_puback(tmp_path: Path, broker: Mosquitto) -> None:
    """With the broker stopped right after connect, nothing unacknowledged leaves the outbox."""
    gate = Gate(tmp_path, [broker.url])
    gate.append(2000)
    gate.publisher.start()
    wait_until(lambda: gate.publisher.delivered > 0)
    broker.kill()
    gate.publisher.stop()
    conn = sqlite3.connect(gate.config.storage.path)
    left = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    conn.close()
    assert left == 2000 - gate.publisher.delivered
    gate.close()


def test_home_assistant_discovery(tmp_path: Path, broker: Mosquitto) -> None:
    gate = Gate(tmp_path, [broker.url], ha_discovery=True)
    gate.publisher.start()
    try:
        assert gate.publisher.connected.wait(30)
        col = Collector(broker.port, ["homeassistant/#"], client_id="ha")
        col.wait_for(lambda m: len(m) >= 5)
        configs = {t: json.loads(p) for t, p, r in col.messages if r}
        assert "homeassistant/sensor/g1/last_temperature/config" in configs
        for c in configs.values():
            assert c["state_topic"] == "gated/s1/g1/status"
            assert c["availability_topic"] == "gated/s1/g1/status"
            assert c["device"]["identifiers"] == ["gated_s1_g1"]
        col.close()
    finally:
        gate.close()


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
        client.socket().close()  # type: ignore[union-attr]
    finally:
        server.close()
        gate.conn.close()
