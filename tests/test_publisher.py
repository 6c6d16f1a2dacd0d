"""The publisher against a real mosquitto: order, outages, a killed broker, failover, TLS, ACL."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gated.errors import ConfigError
from gated.mqtt.publisher import Publisher
from tests.support.fake_broker import FakeBroker
from tests.support.mosquitto import Collector, Door, Mosquitto, free_port
from tests.support.publishing import Gate, check_complete, has_seq
from tests.support.rig import Rig, make_config
from tests.support.waiting import wait_until


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
        assert status[0]["protocol"] == "5.0" and status[0]["broker"] == broker.url
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


# -- only a PUBACK deletes a row ---------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_rows_stay_while_the_broker_never_acknowledges(tmp_path: Path, qos: int) -> None:
    """A broker that takes every PUBLISH and never answers it: not one row leaves the outbox.

    With QoS 0 paho would report each message "published" when written to the socket,
    and these rows would be gone; that is why the config refuses ``qos = 0``.
    """
    fake = FakeBroker("swallow")
    gate = Gate(tmp_path, [fake.url], qos=qos)
    gate.append(50)
    gate.publisher.start()
    try:
        fake.wait_for(lambda f: sum(t.endswith(("/event", "/alarm")) for t in f.publishes) >= 50)
        assert gate.publisher.published == 50
        assert gate.publisher.delivered == 0
        assert gate.backlog() == 50
        gate.publisher.stop()  # a clean stop deletes what was confirmed: nothing
        assert gate.backlog() == 50
    finally:
        gate.close()
        fake.close()


def test_qos_0_is_refused_by_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, mqtt={"urls": ["mqtt://127.0.0.1:1883"], "qos": 0})
    assert any("mqtt.qos" in p and "1 or 2" in p for p in info.value.problems)
    assert make_config(tmp_path, mqtt={"qos": 2}).mqtt.qos == 2


def test_a_commit_wakes_the_publisher_that_would_sleep_an_hour(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Nothing is due for an hour (poll, status, keepalive): a committed event still
    leaves at once, because the controller's commit wakes the publisher's select."""
    rig = Rig(tmp_path, mqtt={"urls": [broker.url], "keepalive_s": 65535})
    ctl = rig.controller
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    col = Collector(broker.port, ["gated/s1/g1/#"])
    pub = Publisher.for_controller(
        rig.config, ctl, poll_s=3600, status_interval_s=3600, stable_s=3600
    )
    pub.start()
    try:
        col.wait_for(lambda m: any(t.endswith("/status") for t, _, _ in m))  # its birth
        woken = pub.wakeups
        ctl.submit(lambda: ctl.desk.guard_on("G01")).result(timeout=10)
        col.wait_for(lambda m: any(e["kind"] == "guard_on" for e in col.events()), timeout=60)
        assert pub.wakeups > woken
        wait_until(lambda: pub.backlog() == 0, "the PUBACKed event deleted")
    finally:
        pub.stop()
        stop.set()
        thread.join(10)
        col.close()
        rig.conn.close()
