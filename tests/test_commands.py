"""Commands over a real mosquitto: each answered on cmd_result, refusals change nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DeviceHealth, Reading
from gated.mqtt_link import Backoff
from gated.publisher import Publisher
from tests.conftest import Rig
from tests.mosquitto import Collector, Door, Mosquitto, publish
from tests.waiting import wait_until

ROOT = "gated/s1/g1"


class Remote:
    """A rig whose controller runs on its thread, a publisher with commands, a broker.

    ``door``: the gate reaches the broker through a :class:`Door` the test can shut.
    ``auth``: the test's own clients log in with it (an ACL broker); ``mqtt`` goes into
    the gate's ``[mqtt]`` section.
    """

    def __init__(
        self,
        tmp_path: Path,
        broker: Mosquitto | None = None,
        door: bool = False,
        auth: dict[str, Any] | None = None,
        **mqtt: Any,
    ):
        self.broker = broker or Mosquitto(tmp_path).start()
        self.auth = auth or {}
        self.door = Door(self.broker.port) if door else None
        url = self.door.url if self.door is not None else self.broker.url
        self.rig = Rig(tmp_path, mqtt={"urls": [url], **mqtt})
        self.stop = threading.Event()
        ctl = self.rig.controller
        self.thread = threading.Thread(target=ctl.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.col = Collector(self.broker.port, [f"{ROOT}/#"], **self.auth)
        self.publisher = self._publisher()
        assert self.publisher.connected.wait(30)

    def _publisher(self) -> Publisher:
        pub = Publisher.for_controller(
            self.rig.config, self.rig.controller, backoff=Backoff(0.05, 0.5)
        )
        assert pub.commands is not None
        self.commands = pub.commands
        pub.start()
        return pub

    def restart(self) -> None:
        """Stop the publisher and start a new one, as a restarted daemon would."""
        self.publisher.stop()
        self.rig.controller.observers.remove(self.publisher.observe)
        self.publisher = self._publisher()
        assert self.publisher.connected.wait(30)

    def send(self, name: str, payload: Any, retain: bool = False) -> dict[str, Any]:
        """Publish a command and wait for its result (matched by req, or the n-th result)."""
        before = len(self.results())
        publish(self.broker.port, f"{ROOT}/cmd/{name}", payload, retain=retain, **self.auth)
        self.col.wait_for(lambda m: len(self.results()) > before, timeout=30)
        return self.results()[before]

    def results(self) -> list[dict[str, Any]]:
        with self.col.cond:
            return [json.loads(p) for t, p, _ in self.col.messages if t == f"{ROOT}/cmd_result"]

    def statuses(self) -> list[dict[str, Any]]:
        with self.col.cond:
            return [json.loads(p) for t, p, _ in self.col.messages if t == f"{ROOT}/status"]

    def close(self) -> None:
        self.publisher.stop()
        self.stop.set()
        self.thread.join(10)
        self.col.close()
        if self.door is not None:
            self.door.close()
        self.broker.kill()
        self.rig.conn.close()


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    r = Remote(tmp_path)
    yield r
    r.close()


def test_open_records_a_remote_grant_and_opens(remote: Remote) -> None:
    result = remote.send("open", {"req": "r1", "by": "ops"})
    assert result["req"] == "r1" and result["ok"] is True and result["error"] is None
    grant = next(e for e in remote.rig.stored() if e["id"] == result["event"])
    assert grant["decision"] == "granted"
    assert grant["credential"] == {"kind": "remote", "ref": "mqtt:ops", "color": None}
    assert "open" in remote.rig.turnstile.history


def test_mode_changes_and_a_bad_mode_changes_nothing(remote: Remote) -> None:
    ok = remote.send("mode", {"req": "m1", "mode": "locked"})
    assert ok["ok"] is True
    assert remote.rig.controller.mode == "locked"
    bad = remote.send("mode", {"req": "m2", "mode": "party"})
    assert bad["ok"] is False and "mode" in bad["error"]
    assert remote.rig.controller.mode == "locked"
    # a remote open is refused while locked: no grant recorded
    before = len(remote.rig.stored())
    refused = remote.send("open", {"req": "o1"})
    assert refused["ok"] is False and "locked" in refused["error"]
    assert len(remote.rig.stored()) == before


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("ping", b"{not json", "not valid JSON"),
        ("ping", b"[1, 2]", "not a JSON object"),
        ("ping", {"nothing": 1}, "req"),
        ("reboot", {"req": "x1"}, "unknown command"),
        ("open", {"req": "x2", "ts": 1_000.0}, "stale"),
        ("revoke", {"req": "x3"}, "exactly one"),
        ("revoke", {"req": "x4", "card": "FFFFFFFFFF"}, "no active card"),
        ("registry", {"req": "x5", "type": "snapshot", "version": 3}, "delta"),
    ],
)
def test_refused_with_a_reason(remote: Remote, name: str, payload: Any, reason: str) -> None:
    before = len(remote.rig.stored())
    result = remote.send(name, payload)
    assert result["ok"] is False
    assert reason in result["error"]
    assert len(remote.rig.stored()) == before
    assert remote.commands.refused >= 1


def test_a_replayed_req_is_refused(remote: Remote) -> None:
    assert remote.send("ping", {"req": "p1"})["ok"] is True
    again = remote.send("ping", {"req": "p1"})
    assert again["ok"] is False and "duplicate" in again["error"]


def test_ping_and_revoke(remote: Remote) -> None:
    pong = remote.send("ping", {"req": "p"})
    assert pong["ok"] is True and pong["mode"] == "normal" and "last_seq" in pong
    assert remote.send("revoke", {"req": "c", "card": "0a1b2c3d4e"})["ok"] is True
    assert remote.rig.registry.card("0A1B2C3D4E").revoked
    assert remote.send("revoke", {"req": "j", "jti": "pass-1"})["ok"] is True
    assert remote.rig.registry.pass_revoked("pass-1")


def test_a_retained_command_is_refused_after_a_restart(remote: Remote) -> None:
    """A retained cmd/open runs once, live; the copy the broker keeps never opens again."""
    first = remote.send("open", {"req": "kept", "by": "ops"}, retain=True)
    assert first["ok"] is True
    opens = remote.rig.turnstile.history.count("open")
    stored = len(remote.rig.stored())
    before = len(remote.results())
    remote.restart()  # the broker hands the retained copy to the new session
    remote.col.wait_for(lambda m: len(remote.results()) > before, timeout=30)
    again = remote.results()[before]
    assert again["req"] == "kept" and again["ok"] is False
    assert "retained" in again["error"]
    assert remote.rig.turnstile.history.count("open") == opens
    assert len(remote.rig.stored()) == stored
    assert remote.commands.refused == 1


def test_a_retained_command_is_refused_with_a_reason(remote: Remote) -> None:
    result = remote.send("mode", {"req": "r1", "mode": "locked"}, retain=True)
    assert result["ok"] is True  # live delivery: the broker clears the retain flag
    remote.restart()
    remote.col.wait_for(lambda m: len(remote.results()) >= 2, timeout=30)
    refused = remote.results()[1]
    assert refused == {
        "req": "r1",
        "ok": False,
        "error": "retained command refused: publish commands without retain"
        " (clear this one with an empty retained message)",
    }
    # clearing it (an empty retained message) is neither executed nor answered
    publish(remote.broker.port, f"{ROOT}/cmd/mode", b"", retain=True)
    assert remote.send("ping", {"req": "p"})["ok"] is True
    assert len(remote.results()) == 3


def test_status_follows_a_mode_command_and_a_device_failure(remote: Remote) -> None:
    """The retained status changes within seconds, not at the next 30 s status."""
    assert remote.publisher.status_interval_s >= 30
    assert remote.send("mode", {"req": "m", "mode": "locked"})["ok"] is True
    remote.col.wait_for(lambda m: any(s.get("mode") == "locked" for s in remote.statuses()), 10)
    remote.rig.controller.put(Reading("device", DeviceHealth(False, "unplugged"), "qr"))

    def qr_failed(m: Any) -> bool:
        return any(s.get("devices", {}).get("qr", {}).get("ok") is False for s in remote.statuses())

    remote.col.wait_for(qr_failed, 10)
    late = Collector(remote.broker.port, [f"{ROOT}/status"], client_id="late")
    try:
        late.wait_for(lambda m: any(r for _, _, r in m))
        retained = json.loads(next(p for _, p, r in late.messages if r))
        assert retained["mode"] == "locked" and retained["devices"]["qr"]["ok"] is False
        assert retained["turnstile"] == "locked" and retained["protocol"] == "5.0"
    finally:
        late.close()


def test_revoking_a_person_voids_their_cards_and_passes_a_card_only_itself(
    remote: Remote,
) -> None:
    rig = remote.rig

    def verdict(kind: str, value: str) -> dict[str, Any]:
        before = len(rig.decisions())
        rig.controller.put(Reading("temp", 36.6, "temp"))
        rig.controller.put(Reading(kind, value, kind))
        wait_until(lambda: len(rig.decisions()) > before, what=f"a verdict on the {kind}")
        rig.controller.submit(lambda: rig.clock.advance(10)).result(10)  # past the open window
        return rig.decisions()[before]

    p1_pass, p2_pass = rig.issue(sub="P1"), rig.issue(sub="P2", hh="H2")
    # a lost card: only that card is refused, the owner's pass still lets them in
    assert remote.send("revoke", {"req": "c", "card": "1122334455"})["ok"] is True
    assert verdict("card", "1122334455")["reasons"] == ["card_revoked"]
    assert verdict("qr", p2_pass)["decision"] == "granted"
    # the person: every card of theirs and every pass issued to them, whatever its jti
    result = remote.send("revoke", {"req": "p", "person": "P1"})
    assert result["ok"] is True and result["cards"] == 1
    assert verdict("card", "0A1B2C3D4E")["reasons"] == ["card_revoked"]
    assert verdict("qr", p1_pass)["reasons"] == ["pass_revoked"]
    assert verdict("qr", rig.issue(sub="P1"))["reasons"] == ["pass_revoked"]
    assert verdict("qr", p2_pass)["decision"] == "granted"
    # a visitor (no registry entry) can be revoked the same way: their passes
    visitor = rig.issue(sub="V9", hh="H9")
    assert remote.send("revoke", {"req": "v", "person": "V9"})["cards"] == 0
    assert verdict("qr", visitor)["reasons"] == ["pass_revoked"]
    both = remote.send("revoke", {"req": "b", "person": "P2", "card": "1122334455"})
    assert both["ok"] is False and "exactly one of card, jti or person" in both["error"]
    assert not rig.registry.person_revoked("P2")
