"""Commands over a real mosquitto: each answered on cmd_result, refusals change nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gated.commands import Commands
from gated.mqtt_link import Backoff
from gated.publisher import Publisher
from tests.conftest import Rig
from tests.mosquitto import Collector, Mosquitto, publish

ROOT = "gated/s1/g1"


class Remote:
    """A rig whose controller runs on its thread, a publisher with commands, a broker."""

    def __init__(self, tmp_path: Path):
        self.broker = Mosquitto(tmp_path).start()
        self.rig = Rig(tmp_path, mqtt={"urls": [self.broker.url]})
        self.stop = threading.Event()
        ctl = self.rig.controller
        self.thread = threading.Thread(target=ctl.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.commands = Commands(ctl)
        self.publisher = Publisher(
            self.rig.config,
            commands=self.commands,
            snapshot=lambda: ctl.submit(ctl.snapshot),
            backoff=Backoff(0.05, 0.5),
        )
        self.col = Collector(self.broker.port, [f"{ROOT}/#"])
        self.publisher.start()
        assert self.publisher.connected.wait(30)

    def send(self, name: str, payload: Any) -> dict[str, Any]:
        """Publish a command and wait for its result (matched by req, or the n-th result)."""
        before = len(self.results())
        publish(self.broker.port, f"{ROOT}/cmd/{name}", payload)
        self.col.wait_for(lambda m: len(self.results()) > before, timeout=30)
        return self.results()[before]

    def results(self) -> list[dict[str, Any]]:
        with self.col.cond:
            return [json.loads(p) for t, p, _ in self.col.messages if t == f"{ROOT}/cmd_result"]

    def close(self) -> None:
        self.publisher.stop()
        self.stop.set()
        self.thread.join(10)
        self.col.close()
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
