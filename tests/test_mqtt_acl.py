"""The mosquitto ACL of docs/mqtt.md, read out of the document and run against a real broker."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.common.base import DeviceHealth, Reading
from tests.support.mosquitto import Collector, Mosquitto, free_port, publish
from tests.support.publishing import Gate
from tests.support.remote import Remote
from tests.support.waiting import wait_until

DOC = Path(__file__).resolve().parent.parent / "docs" / "mqtt.md"
USERS = ("g1", "g2", "central", "homeassistant")


def doc_acls() -> list[str]:
    """The fenced blocks of the ACL section of docs/mqtt.md, as written there."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## The broker ACL") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"^```\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert len(blocks) == 2, "docs/mqtt.md: the ACL section has the pattern and per-gate blocks"
    return blocks


def auth(user: str) -> dict[str, str]:
    return {"username": user, "password": f"pw-{user}"}


def acl_broker(tmp_path: Path, acl: str) -> tuple[Mosquitto, dict[str, Path]]:
    """A mosquitto with a password per user (``pw-<user>``, also in a file each) and ``acl``."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    pw = tmp_path / "passwd"
    files = {}
    for user in USERS:
        files[user] = secrets / user
        files[user].write_text(f"pw-{user}\n")
    pw.write_text("".join(f"{u}:pw-{u}\n" for u in USERS))
    subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
    (tmp_path / "acl").write_text(acl)
    port = free_port()
    extra = (
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {pw}\nacl_file {tmp_path / 'acl'}\n"
    )
    return Mosquitto(tmp_path, extra=extra, port=port).start(), files


class Raw:
    """A bare MQTT 5 client logged in as ``user``: the PUBACK reason of each publish."""

    def __init__(self, port: int, user: str, client_id: str):
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(**auth(user))
        self.codes: dict[int, Any] = {}
        self.client.on_publish = lambda c, u, mid, rc, p: self.codes.__setitem__(mid, rc)
        up = threading.Event()
        self.client.on_connect = lambda *a: up.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert up.wait(20)

    def allowed(self, topic: str) -> bool:
        """Publish with QoS 1: did the broker accept it?"""
        mid = self.client.publish(topic, b'{"req": "x", "seq": 1}', qos=1).mid
        wait_until(lambda: mid in self.codes, f"PUBACK for {topic}")
        return not self.codes[mid].is_failure

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_the_documented_acl_lets_a_gate_use_only_its_own_topics(tmp_path: Path) -> None:
    b, files = acl_broker(tmp_path, doc_acls()[0])
    gate = Remote(
        tmp_path, broker=b, auth=auth("central"), username="g1", password_file=str(files["g1"])
    )
    try:
        # the gate reads its own commands and answers on cmd_result
        assert gate.send("ping", {"req": "p1"})["ok"] is True
        # its events and alarms reach the central side
        gate.rig.controller.put(Reading("device", DeviceHealth(False, "unplugged"), "qr"))
        own = {"gated/s1/g1/event", "gated/s1/g1/alarm"}
        gate.col.wait_for(lambda m: own <= {t for t, *_ in m})
        # Home Assistant's "Open" reaches it (and nothing else of Home Assistant's may write)
        before = len(gate.results())
        open_cmd = {"req": "ha-1", "ts": gate.now()}
        publish(b.port, "gated/s1/g1/cmd/open", open_cmd, **auth("homeassistant"))
        gate.col.wait_for(lambda m: len(gate.results()) > before)
        assert gate.results()[before] == {
            "req": "ha-1",
            "ok": True,
            "error": None,
            "event": gate.results()[before]["event"],
        }
        ha = Raw(b.port, "homeassistant", "ha-raw")
        assert not ha.allowed("gated/s1/g1/cmd/mode")
        assert not ha.allowed("gated/s1/g1/event")
        ha.close()

        # the gate's user may not write another gate's topics, nor command anybody,
        # except a replay asked of a peer (contracts §4b)
        raw = Raw(b.port, "g1", "g1-raw")
        for topic in ("event", "alarm", "status", "cmd_result"):
            assert not raw.allowed(f"gated/s1/g2/{topic}"), topic
        assert not raw.allowed("gated/s1/g1/cmd/open")
        assert not raw.allowed("gated/s1/registry")
        assert raw.allowed("gated/s1/g1/cmd_result")
        assert raw.allowed("gated/s1/g2/cmd/replay")
        for name in ("open", "mode", "revoke", "registry", "ping"):
            assert not raw.allowed(f"gated/s1/g2/cmd/{name}"), name
        raw.close()

        # it reads its peers' events, alarms, status and answers (a replay's)
        peers = [
            "gated/s1/+/event",
            "gated/s1/+/alarm",
            "gated/s1/+/status",
            "gated/s1/+/cmd_result",
        ]
        peer_spy = Collector(b.port, peers, "g1-peers", **auth("g1"))
        for topic in ("event", "alarm", "status", "cmd_result"):
            publish(b.port, f"gated/s1/g2/{topic}", {"seq": 1}, **auth("central"))
        want = {f"gated/s1/g2/{t}" for t in ("event", "alarm", "status", "cmd_result")}
        peer_spy.wait_for(lambda m: want <= {t for t, _, _ in m})
        peer_spy.close()

        # it subscribes to g2's commands too: the broker grants, and delivers nothing
        spy = Collector(b.port, ["gated/s1/g2/cmd/+", "gated/s1/g1/cmd/+"], "g1-spy", **auth("g1"))
        publish(b.port, "gated/s1/g2/cmd/open", {"req": "a"}, **auth("central"))
        publish(b.port, "gated/s1/g1/cmd/ping", {"req": "b"}, **auth("central"))
        spy.wait_for(lambda m: any(t == "gated/s1/g1/cmd/ping" for t, _, _ in m))
        assert [t for t, _, _ in spy.messages] == ["gated/s1/g1/cmd/ping"]
        spy.close()
    finally:
        gate.close()  # also stops the broker


def test_a_gate_refused_after_connect_backs_off_and_keeps_its_events(tmp_path: Path) -> None:
    """A gate configured with another gate's credentials: CONNACK fine, every event refused.

    Its outbox keeps every event, and the backoff grows from one reconnect to the next
    (a CONNACK is not a good connection: it must not reset the backoff).
    """
    b, files = acl_broker(tmp_path, doc_acls()[0])
    wrong = Gate(tmp_path, [b.url], username="g2", password_file=str(files["g2"]))
    try:
        wrong.append(3)
        wrong.publisher.start()
        # mosquitto 2.0 answers PUBACK 135 and then drops the connection, so a PUBACK
        # can be lost with it; the gate reconnects either way.
        pub = wrong.publisher
        wait_until(lambda: pub.sessions >= 5 and pub.refused >= 1, "refused sessions")
        backoff = pub.link.backoff
        assert backoff.current == backoff.high
        assert pub.delivered == 0
        assert wrong.backlog() == 3
    finally:
        wrong.close()
        b.kill()


def test_the_per_gate_acl_binds_a_gate_to_its_site(tmp_path: Path) -> None:
    pattern, per_gate = doc_acls()
    central_and_ha = pattern[: pattern.index("# every gate")]
    gate_block = per_gate.replace("greenfield", "s1").replace("north-1", "g1")
    b, _ = acl_broker(tmp_path, central_and_ha + gate_block)
    central = Collector(b.port, ["gated/#"], "central", **auth("central"))
    spy = Collector(b.port, ["gated/+/registry"], "g1-spy", **auth("g1"))
    # a gate's peer subscription, as wide as it could ask: only its own site arrives
    peers = Collector(b.port, ["gated/+/+/event", "gated/+/+/alarm"], "g1-peers", **auth("g1"))
    raw = Raw(b.port, "g1", "g1-raw")
    try:
        assert raw.allowed("gated/s1/g1/event")
        assert not raw.allowed("gated/s2/g1/event")  # not under another site's name
        assert not raw.allowed("gated/s1/g2/event")
        # a replay asked of its own site's peers, nothing else to a peer or another site
        assert raw.allowed("gated/s1/g2/cmd/replay")
        assert not raw.allowed("gated/s2/g2/cmd/replay")
        assert not raw.allowed("gated/s1/g2/cmd/open")
        assert not raw.allowed("gated/s1/g2/cmd/revoke")
        publish(b.port, "gated/s2/registry", {"version": 1}, **auth("central"))
        publish(b.port, "gated/s1/registry", {"version": 2}, **auth("central"))
        spy.wait_for(lambda m: any(t == "gated/s1/registry" for t, _, _ in m))
        assert [json.loads(p)["version"] for _, p, _ in spy.messages] == [2]
        for n, topic in enumerate(("gated/s2/g2/event", "gated/s2/g2/alarm", "gated/s1/g2/alarm")):
            publish(b.port, topic, {"seq": n}, **auth("central"))
        publish(b.port, "gated/s1/g2/event", {"seq": 9}, **auth("central"))
        peers.wait_for(lambda m: any(t == "gated/s1/g2/event" for t, _, _ in m))
        got = [t for t, _, _ in peers.messages if "/g2/" in t]  # (its own event came too)
        assert got == ["gated/s1/g2/alarm", "gated/s1/g2/event"]
        central.wait_for(lambda m: any(t == "gated/s1/g1/event" for t, _, _ in m))
        assert not any(t.startswith("gated/s2/g1") for t, _, _ in central.messages)
    finally:
        raw.close()
        spy.close()
        peers.close()
        central.close()
        b.kill()
