"""The hub's registry (gated/hub/registry.py) with real parts: a real mosquitto, two real
``gated run`` gates of one site, ``gated hub registry publish`` and ``gated hub revoke`` run
as real commands against the hub's SQLite file.

No hub runs here (``gated hub run`` is another module's): the hub's rows for the gates
(``hub_gates``) are written with ``HubStore.status`` from the statuses the gates published
on the broker, as the running hub's ingest does, and :func:`follow_up` is called as the
ingest calls it, its ``publish`` a real QoS 1 publish to the broker.

The tests of the site run in order on one pair of gates, each with cards of its own.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gated.hub.config import HubConfig, load_hub_config
from gated.hub.registry import GRACE_S, follow_up, latest_versions
from gated.hub.store import HubStore
from gated.passes import issue_pass
from tests.support.daemon import Daemon
from tests.support.gate_process import COLUMNS
from tests.support.mosquitto import Collector, Mosquitto, free_port, publish
from tests.support.site import CHEN_CARD, SITE_PEOPLE, WANG_CARD, ZHANG_CARD, Site
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

#: A resident only the hub's registry has: a gate knows this card once the snapshot applied.
SUN_CARD = "CAFE000009"
SUN = f"P9,Sun Li,320623199909091234,4-401,H9,resident,green,0,{SUN_CARD}"
#: The hub's registry: the site's people but Zhao Lei (P7, moved out), and Sun Li.
HUB_PEOPLE = (*[p for p in SITE_PEOPLE if not p.startswith("P7,")], SUN)


def write_csv(path: Path, rows: tuple[str, ...]) -> Path:
    path.write_text("".join(line + "\n" for line in (COLUMNS, *rows)), encoding="utf-8")
    return path


def hub_toml(path: Path, url: str) -> Path:
    path.write_text(
        '[hub]\nid = "d1"\ndatabase = "sqlite:///hub.db"\nshare_group = ""\n'
        # long: follow_up is called with a clock moved past GRACE_S
        "offline_after_s = 3600\n"
        f'[mqtt]\nurls = ["{url}"]\n'
    )
    return path


def hub(config: Path, *args: str) -> tuple[int, str]:
    """Run ``gated hub ARGS -c config`` to its end: exit code and output."""
    d = Daemon("hub", *args, "-c", str(config))
    code = d.finish(timeout=90)
    return code, d.output()


def retained(port: int, topic: str) -> bytes | None:
    """The message the broker retains on ``topic`` (None: none).

    A marker is retained first and subscribed to after ``topic``: the broker hands out
    retained messages subscription by subscription, so once the marker is in, what
    ``topic`` retains (if anything) came before it.
    """
    marker = f"test/marker/{time.monotonic_ns()}"
    publish(port, marker, b"m", retain=True)
    col = Collector(port, [topic, marker], client_id=f"retained-{time.monotonic_ns()}")
    try:
        col.wait_for(lambda ms: any(t == marker for t, _, _ in ms), timeout=20)
        with col.cond:
            found = [p for t, p, r in col.messages if t == topic and r and p]
    finally:
        col.close()
        publish(port, marker, b"", retain=True)
    return found[-1] if found else None


class Env:
    """The site's two gates, the hub's config and store."""

    def __init__(self, tmp: Path):
        self.site = Site(tmp, {"g1": "in", "g2": "in"}, policy={"antipassback": "off"})
        self.port = self.site.broker.port
        self.toml = hub_toml(tmp / "hub.toml", self.site.broker.url)
        self.config: HubConfig = load_hub_config(self.toml)
        self.tmp = tmp

    def store(self) -> HubStore:
        return HubStore(self.config.database_path)

    def last_status(self, gate: str, state: str = "online") -> dict[str, Any]:
        found: dict[str, Any] = wait_until(
            lambda: next(
                (s for s in reversed(self.site.statuses(gate)) if s.get("state") == state), None
            ),
            f"a {state} status of {gate}",
        )
        return found

    def hub_hears(self, *gates: str, state: str = "online") -> None:
        """The hub's rows of ``gates`` from their latest status on the broker."""
        store = self.store()
        try:
            store.begin()
            for g in gates:
                store.status("s1", g, self.last_status(g, state), time.time())
            store.commit()
        finally:
            store.close()

    def wait_version(self, gate: str, version: int) -> dict[str, Any]:
        """Until ``gate`` says in its status that it applied ``version``."""
        found: dict[str, Any] = wait_until(
            lambda: next(
                (
                    s
                    for s in reversed(self.site.statuses(gate))
                    if s.get("state") == "online" and s.get("registry_version") == version
                ),
                None,
            ),
            f"{gate} applying registry version {version}",
            timeout=60,
        )
        return found

    def export(self, gate: str) -> dict[str, dict[str, str]]:
        """``gated registry export`` of the gate: its rows by card uid (or person id)."""
        d = Daemon("registry", "export", "-c", str(self.site[gate].config))
        assert d.finish(timeout=60) == 0, d.output()
        lines = [ln for ln in d.lines if "," in ln and " INFO " not in ln]
        header = lines[0].split(",")
        rows = [dict(zip(header, ln.split(","), strict=True)) for ln in lines[1:]]
        return {r["card_uid"] or r["person_id"]: r for r in rows}

    def history(self) -> list[dict[str, Any]]:
        store = self.store()
        try:
            return store.registry_history("s1")
        finally:
            store.close()

    def publish_fn(self) -> Any:
        def send(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            publish(self.port, topic, payload, retain=retain)

        return send


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("hubreg"))
    e.site.start()
    yield e
    e.site.close()


def denied(d: dict[str, Any], reason: str) -> bool:
    return d["decision"] == "denied" and reason in d["reasons"]


def test_a_bad_row_is_named_by_its_line_and_nothing_is_published(env: Env) -> None:
    bad = write_csv(
        env.tmp / "bad.csv", (*HUB_PEOPLE[:1], "P2,Li Na,1,1-102,H2,resident,purple!,0,112233")
    )
    code, out = hub(env.toml, "registry", "publish", str(bad), "--site", "s1")
    assert code == 2, out
    assert f"{bad}:3: color" in out, out
    assert retained(env.port, "gated/s1/registry") is None
    assert env.history() == []
    env.hub_hears("g1", "g2")
    assert env.last_status("g1")["registry_version"] == 0


def test_a_published_csv_is_applied_by_every_gate(env: Env) -> None:
    code, out = hub(
        env.toml, "registry", "publish", str(write_csv(env.tmp / "r1.csv", HUB_PEOPLE)),
        "--site", "s1",
    )  # fmt: skip
    assert code == 0, out
    assert "site s1: registry version 1 published (7 persons, 7 cards" in out, out
    for gate in ("g1", "g2"):
        env.wait_version(gate, 1)
        rows = env.export(gate)
        assert rows[SUN_CARD]["person_id"] == "P9" and rows[SUN_CARD]["active"] == "true"
        zhao = [r for r in rows.values() if r["person_id"] == "P7"]
        assert [r["active"] for r in zhao] == ["false"], zhao  # not in the hub's CSV
    d = env.site.arrive("g1", card=SUN_CARD)
    assert d["decision"] == "granted", d
    # what the broker retains is the version the hub's history holds, byte for byte
    payload = retained(env.port, "gated/s1/registry")
    assert payload is not None and json.loads(payload)["version"] == 1
    (v1,) = env.history()
    assert v1["version"] == 1 and v1["published_at"] is not None and v1["error"] is None
    assert v1["sha256"] == hashlib.sha256(payload).hexdigest()
    assert (v1["persons"], v1["cards"]) == (7, 7)


def test_a_revoked_card_is_refused_online_at_once_and_offline_on_return(env: Env) -> None:
    env.site["g2"].stop()
    env.hub_hears("g1")
    env.hub_hears("g2", state="offline")
    # the uid as a person types it: lower case, a space
    code, out = hub(env.toml, "revoke", "--site", "s1", "--card", "0a1b 2c3d4e")
    assert code == 0, out
    assert "card revoked in registry version 2" in out, out
    assert "delta 2 sent to s1/g1 (online)" in out, out
    assert "s1/g2 (offline: takes snapshot 2 when it reconnects)" in out, out
    env.wait_version("g1", 2)
    # g1 applied the delta (its answer on cmd_result)
    with env.site.watch.cond:
        answers = [
            json.loads(p)
            for t, p, _ in env.site.watch.messages
            if t == "gated/s1/g1/cmd_result" and b"hub-registry-2-" in p
        ]
    assert [(a["ok"], a["version"]) for a in answers] == [(True, 2)], answers
    assert denied(env.site.arrive("g1", card=ZHANG_CARD), "card_revoked")
    # g2 was away: the retained snapshot 2 reaches it when it is back
    env.site.start("g2")
    env.wait_version("g2", 2)
    assert denied(env.site.arrive("g2", card=ZHANG_CARD), "card_revoked")
    assert ZHANG_CARD not in env.export("g2")  # the export leaves revoked cards out
    store = env.store()
    try:
        assert store.revokes("s1") == {"card": [ZHANG_CARD], "pass": [], "person": []}
        assert latest_versions(store) == {"s1": 2}
    finally:
        store.close()
    assert [h["version"] for h in env.history()] == [2, 1]


def test_a_new_csv_keeps_what_was_revoked(env: Env) -> None:
    code, out = hub(
        env.toml, "registry", "publish", str(write_csv(env.tmp / "r2.csv", HUB_PEOPLE)),
        "--site", "s1",
    )  # fmt: skip
    assert code == 0, out
    assert "registry version 3 published (7 persons, 7 cards, 1 revocations kept)" in out, out
    env.wait_version("g1", 3)
    payload = retained(env.port, "gated/s1/registry")
    assert payload is not None and json.loads(payload)["revoked_cards"] == [ZHANG_CARD]
    assert denied(env.site.arrive("g1", card=ZHANG_CARD), "card_revoked")


def test_follow_up_sends_the_delta_to_a_gate_back_after_the_snapshot_was_lost(env: Env) -> None:
    env.wait_version("g2", 3)
    env.site["g2"].stop()
    env.hub_hears("g1")
    env.hub_hears("g2", state="offline")
    jti = f"hub-test-{time.monotonic_ns()}"
    token = issue_pass(env.site.key_dir / "k1.key", kid="k1", sub="V1", hh="H91", col="green",
                       otp=False, jti=jti)  # fmt: skip
    code, out = hub(env.toml, "revoke", "--site", "s1", "--jti", jti)
    assert code == 0, out
    env.wait_version("g1", 4)
    assert denied(env.site.arrive("g1", qr=token), "pass_revoked")
    # the broker restarts holding nothing (no persistence): snapshot 4 is gone from it
    env.site.restart_broker()
    assert retained(env.port, "gated/s1/registry") is None
    env.site.start("g2")
    env.site.command("g2", "ping", {})  # it takes commands: its cmd/registry is subscribed
    env.hub_hears("g2")
    assert env.last_status("g2")["registry_version"] == 3
    store = env.store()
    try:
        sent = follow_up(store, env.config, "s1", "g2", env.publish_fn(), time.time())
        assert sent == 1
        env.wait_version("g2", 4)
        assert denied(env.site.arrive("g2", qr=token), "pass_revoked")
        env.hub_hears("g2")
        # caught up: nothing more
        assert follow_up(store, env.config, "s1", "g2", env.publish_fn(), time.time()) == 0
    finally:
        store.close()


def test_follow_up_publishes_a_lost_snapshot_again_once_the_gate_stays_behind(env: Env) -> None:
    env.site["g2"].stop()
    env.hub_hears("g2", state="offline")
    rows = (*HUB_PEOPLE, f"P10,Zhou Xun,320623200001011234,5-501,H10,resident,green,0,{CHEN_CARD}0")
    code, out = hub(
        env.toml, "registry", "publish", str(write_csv(env.tmp / "r3.csv", rows)), "--site", "s1"
    )
    assert code == 0, out
    env.wait_version("g1", 5)
    env.site.restart_broker()
    env.site.start("g2")
    env.site.command("g2", "ping", {})  # subscribed (the registry topic with its commands)
    env.hub_hears("g1", "g2")
    assert env.last_status("g2")["registry_version"] == 4
    store = env.store()
    send = env.publish_fn()
    try:
        now = time.time()
        # just back: the retained snapshot is what it gets on subscribing; nothing sent
        assert follow_up(store, env.config, "s1", "g2", send, now) == 0
        # still behind past the grace: the snapshot is published again, retained
        assert follow_up(store, env.config, "s1", "g2", send, now + GRACE_S) == 1
        env.wait_version("g2", 5)
        payload = retained(env.port, "gated/s1/registry")
        assert payload is not None and json.loads(payload)["version"] == 5
        # at most once a while per site, whatever the gates say meanwhile
        assert follow_up(store, env.config, "s1", "g2", send, now + GRACE_S + 30) == 0
    finally:
        store.close()
    assert env.export("g2")[f"{CHEN_CARD}0"]["person_id"] == "P10"
    assert denied(env.site.arrive("g2", card=ZHANG_CARD), "card_revoked")
    assert WANG_CARD in env.export("g2")
    assert [h["version"] for h in env.history()] == [5, 4, 3, 2, 1]


def test_a_gate_whose_registry_came_from_an_older_hub_database_is_named(env: Env) -> None:
    # the hub's database restored from a backup older than versions 1 to 5 (here: none at all)
    restored = env.tmp / "restored"
    restored.mkdir()
    toml = hub_toml(restored / "hub.toml", env.site.broker.url)
    for gate in ("g1", "g2"):
        env.wait_version(gate, 5)
    store = HubStore(load_hub_config(toml).database_path)
    try:
        store.begin()
        for gate in ("g1", "g2"):
            store.status("s1", gate, env.last_status(gate), time.time())
        store.commit()
    finally:
        store.close()
    csv = str(write_csv(restored / "r.csv", HUB_PEOPLE))
    code, out = hub(toml, "registry", "publish", csv, "--site", "s1")
    assert code == 0 and "site s1: registry version 1 published" in out, out
    for gate in ("g1", "g2"):
        assert (
            f"note: s1/{gate} reports registry version 5, above the hub's 0: publish with"
            " --above 5 if that gate's registry really came from elsewhere"
        ) in out, out
    env.site["g1"].daemon.wait_for(
        lambda lines: any("stale snapshot 1 (have 5)" in ln for ln in lines)
    )
    # the operator does as the note says: every gate takes the new snapshot
    code, out = hub(toml, "registry", "publish", csv, "--site", "s1", "--above", "5")
    assert code == 0 and "site s1: registry version 6 published" in out, out
    assert "note:" not in out, out
    for gate in ("g1", "g2"):
        env.wait_version(gate, 6)
        assert f"{CHEN_CARD}0" not in env.export(gate)  # P10 is not in this CSV


def test_a_forged_status_does_not_use_up_the_sites_versions(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    try:
        toml = hub_toml(tmp_path / "hub.toml", broker.url)
        store = HubStore(load_hub_config(toml).database_path)
        # from a stolen gate account: one below the last version a gate takes
        forged = 2**53 - 2
        store.begin()
        store.status("s9", "g1", {"state": "online", "registry_version": forged}, time.time())
        store.commit()
        csv = str(write_csv(tmp_path / "r.csv", HUB_PEOPLE))
        for version in (1, 2):
            code, out = hub(toml, "registry", "publish", csv, "--site", "s9")
            assert code == 0 and f"site s9: registry version {version} published" in out, out
            assert f"note: s9/g1 reports registry version {forged}, above the hub's" in out, out
        payload = retained(broker.port, "gated/s9/registry")
        assert payload is not None and json.loads(payload)["version"] == 2
        # an operator who jumps to the last version a gate takes: nothing can follow it
        code, out = hub(toml, "registry", "publish", csv, "--site", "s9", "--above", str(forged))
        assert code == 0 and f"registry version {2**53 - 1} published" in out, out
        code, out = hub(toml, "registry", "publish", csv, "--site", "s9")
        assert code == 1, out
        assert f"site s9: version {2**53 - 1} is the last a gate takes" in out, out
        code, out = hub(toml, "registry", "publish", csv, "--site", "s9", "--above", str(2**53 - 1))
        assert code == 2 and "--above: expected a version from 0 to" in out, out
        assert [h["version"] for h in store.registry_history("s9")] == [2**53 - 1, 2, 1]
        store.close()
    finally:
        broker.kill()


def test_follow_up_reads_a_snapshot_only_to_publish_it_again(tmp_path: Path) -> None:
    config = load_hub_config(hub_toml(tmp_path / "hub.toml", f"mqtt://127.0.0.1:{free_port()}"))
    store = HubStore(config.database_path)
    now = time.time()
    store.begin()
    for version in (1, 2):
        body = json.dumps({"type": "snapshot", "version": version, "persons": []})
        store.registry_add("s1", version, body, 0, 0, "-", now)
        store.registry_sent("s1", version, now, None)
    store.status("s1", "g1", {"state": "online", "registry_version": 2}, now)
    store.status("s1", "g2", {"state": "online", "registry_version": 1}, now)
    store.commit()
    # every column the store's statements read from here on (set_authorizer re-prepares them)
    read: list[tuple[str, str]] = []

    def authorizer(action: int, table: Any, column: Any, db: Any, source: Any) -> int:
        if action == sqlite3.SQLITE_READ:
            read.append((table, column))
        return sqlite3.SQLITE_OK

    store.conn.set_authorizer(authorizer)
    sent: list[tuple[str, bytes, int, bool]] = []

    def send(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        sent.append((topic, payload, qos, retain))

    try:
        # a gate at the latest, a gate behind within the grace: versions only
        assert follow_up(store, config, "s1", "g1", send, now) == 0
        assert follow_up(store, config, "s1", "g2", send, now) == 0
        assert ("hub_registry", "version") in read
        assert ("hub_registry", "body") not in read
        # behind past the grace: the snapshot's body is read, and published again
        assert follow_up(store, config, "s1", "g2", send, now + GRACE_S) == 1
        assert ("hub_registry", "body") in read
        body = store.registry_body("s1", 2)
        assert body is not None and '"version": 2' in body
        assert sent == [("gated/s1/registry", body.encode(), 1, True)]
    finally:
        store.conn.set_authorizer(None)
        store.close()


def test_versions_go_above_with_above_and_a_failed_send_is_not_the_latest(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path).start()
    try:
        toml = hub_toml(tmp_path / "hub.toml", broker.url)
        config = load_hub_config(toml)
        store = HubStore(config.database_path)
        # a gate of s9 says it applied version 7 (from a hub whose store was lost)
        store.begin()
        store.status("s9", "g1", {"state": "online", "registry_version": 7}, time.time())
        # one past what any gate can apply: named, with no way past it
        store.status("s9", "g2", {"state": "online", "registry_version": 2**53}, time.time())
        store.commit()
        csv = write_csv(tmp_path / "r.csv", HUB_PEOPLE)
        code, out = hub(toml, "registry", "publish", str(csv), "--site", "s9")
        assert code == 0 and "registry version 1 published" in out, out
        assert "note: s9/g1 reports registry version 7, above the hub's 0: publish with" in out
        assert f"s9/g2 reports registry version {2**53}, above the hub's 0: no version can" in out
        code, out = hub(toml, "registry", "publish", str(csv), "--site", "s9", "--above", "7")
        assert code == 0 and "registry version 8 published" in out, out
        assert "s9/g1" not in out and f"s9/g2 reports registry version {2**53}" in out, out
        # the broker is unreachable: exit 1, the version is kept as not published
        dead = hub_toml(tmp_path / "dead.toml", f"mqtt://127.0.0.1:{free_port()}")
        code, out = hub(dead, "registry", "publish", str(csv), "--site", "s9")
        assert code == 1, out
        assert "version 9 was NOT published" in out, out
        (v9, _v8, _v1) = store.registry_history("s9")
        assert v9["version"] == 9 and v9["published_at"] is None and v9["error"]
        assert latest_versions(store) == {"s9": 8}
        # a revocation made while the broker is down is kept for the next version
        code, out = hub(dead, "revoke", "--site", "s9", "--card", WANG_CARD)
        assert code == 1 and "the revocation is recorded at the hub" in out, out
        assert "note: no person" not in out, out
        code, out = hub(dead, "revoke", "--site", "s9", "--card", "DEADBEEF01")
        assert code == 1 and "note: no person of s9's registry version 8 holds card" in out
        code, out = hub(toml, "registry", "publish", str(csv), "--site", "s9")
        assert code == 0 and "registry version 12 published" in out, out
        payload = retained(broker.port, "gated/s9/registry")
        assert payload is not None
        assert json.loads(payload)["revoked_cards"] == [WANG_CARD, "DEADBEEF01"]
        # a site the hub never published for: a revocation is refused (it would empty it)
        code, out = hub(toml, "revoke", "--site", "s8", "--card", WANG_CARD)
        assert code == 1 and "has published no registry for it yet" in out, out
        store.close()
    finally:
        broker.kill()


def test_a_site_name_that_is_not_a_topic_level_is_refused(tmp_path: Path) -> None:
    toml = hub_toml(tmp_path / "hub.toml", f"mqtt://127.0.0.1:{free_port()}")
    csv = write_csv(tmp_path / "r.csv", HUB_PEOPLE)
    code, out = hub(toml, "registry", "publish", str(csv), "--site", "s1/#")
    assert code == 1 and "--site 's1/#'" in out, out
    assert not (tmp_path / "hub.db").exists()


def test_a_snapshot_the_broker_refuses_is_not_published(tmp_path: Path) -> None:
    # the hub's user may not write the site's registry topic (MQTT 5: a PUBACK that refuses)
    acl = tmp_path / "acl"
    acl.write_text("topic read gated/#\ntopic readwrite test/#\n")
    port = free_port()
    broker = Mosquitto(
        tmp_path,
        port=port,
        extra=f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {acl}",
    ).start()
    try:
        toml = hub_toml(tmp_path / "hub.toml", broker.url)
        csv = write_csv(tmp_path / "r.csv", HUB_PEOPLE)
        code, out = hub(toml, "registry", "publish", str(csv), "--site", "s1")
        assert code == 1, out
        assert "gated/s1/registry:" in out and "refused it: Not authorized" in out, out
        assert "version 1 was NOT published" in out, out
        store = HubStore(load_hub_config(toml).database_path)
        try:
            (v1,) = store.registry_history("s1")
            assert v1["published_at"] is None and "Not authorized" in v1["error"]
            assert latest_versions(store) == {}
        finally:
            store.close()
        assert retained(port, "gated/s1/registry") is None
    finally:
        broker.kill()


def test_a_row_the_gates_would_refuse_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    # the CSV's checks take a name of any length; a gate takes at most 256 characters
    toml = hub_toml(tmp_path / "hub.toml", f"mqtt://127.0.0.1:{free_port()}")
    long_name = "P3,Zhang " + "M" * 300 + ",320623199203031234,1-101,H1,resident,green,0,5566778899"
    csv = write_csv(tmp_path / "r.csv", (*HUB_PEOPLE[:2], long_name))
    code, out = hub(toml, "registry", "publish", str(csv), "--site", "s1")
    assert code == 2, out
    assert "person P3: the gates would refuse this snapshot: persons[2].name" in out, out
    store = HubStore(load_hub_config(toml).database_path)
    try:
        assert store.registry_history("s1") == []
    finally:
        store.close()
