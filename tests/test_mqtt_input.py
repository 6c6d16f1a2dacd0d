"""The input guard: every broker message decoded within bounds; hostile ones never end a session."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from drivers.common.base import DeviceHealth, Reading
from gated.mqtt import registry_sync
from gated.mqtt.inbound import COMMAND_MAX_BYTES, MAX_DEPTH, InputRefused, decode, nesting_depth
from tests.support.mosquitto import publish
from tests.support.remote import ROOT, Remote
from tests.support.waiting import wait_until

DEEP = b"[" * 50_000 + b"]" * 50_000
DEEP_COMMAND = b"[" * 30_000 + b"]" * 30_000  # within the 64 KiB of a command
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
LONG_TS = b'{"req": "long-ts", "ts": ' + b"9" * 400 + b"}"
REGISTRY = "gated/s1/registry"


def refused(payload: bytes, max_bytes: int = COMMAND_MAX_BYTES) -> InputRefused:
    with pytest.raises(InputRefused) as info:
        decode(payload, max_bytes)
    return info.value


# -- the guard on its own -------------------------------------------------------------


def test_nesting_50000_deep_is_refused_without_recursion() -> None:
    for payload in (DEEP, DEEP_OBJECT):
        exc = refused(payload, 1 << 20)
        assert exc.code == "depth" and "50000 levels" in exc.reason
    assert decode(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, 1024) is not None
    assert refused(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)).code == "depth"


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": ["[[[[{{{{", '\\"]]]]', '"{"'], "b": "\\"})
    assert nesting_depth(text.encode()) == 2
    assert decode(text.encode(), 1024) == json.loads(text)
    shallow = json.dumps({"detail": "[{" * MAX_DEPTH, "list": [[1]]})  # more than the limit
    assert decode(shallow.encode(), 1024) == json.loads(shallow)
    # a string never closed: what follows it counts (json.loads refuses it anyway)
    assert nesting_depth(b'["\\"' + b"[" * 40) == 41


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (LONG_TS, "integer out of range (400 digits"),
        (b"9007199254740993", "integer out of range"),
        (b"-9007199254740993", "integer out of range"),
        (b"1e400", "number out of range"),
        (b"-1" + b"0" * 400 + b".5", "number out of range"),
        (b'{"ts": NaN}', "NaN is not a JSON number"),
        (b"[Infinity]", "Infinity is not a JSON number"),
        (b"-Infinity", "-Infinity is not a JSON number"),
    ],
)
def test_numbers_out_of_range_are_refused(payload: bytes, reason: str) -> None:
    exc = refused(payload)
    assert exc.code == "number" and reason in exc.reason


def test_numbers_in_range_are_taken() -> None:
    assert decode(b"[9007199254740992, -9007199254740992, 1.5e300, 0, -0.0]", 100) == [
        2**53,
        -(2**53),
        1.5e300,
        0,
        -0.0,
    ]


def test_size_utf8_and_syntax() -> None:
    assert refused(b" " * 10 + b"{}", 11).code == "size"
    assert decode(b" " * 9 + b"{}", 11) == {}
    assert "limit 11" in refused(b"[" + b"1," * 10 + b"1]", 11).reason
    assert refused(b'{"req": "\xff"}').code == "utf8"
    assert refused('{"req": "x"}'.encode("utf-16")).code in ("utf8", "json")
    for bad in (b"", b"{", b"{'a': 1}", b'{"a": 1} x', b'"\x01"', b"\x00"):
        assert refused(bad).code == "json", bad


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_value_or_a_refusal(payload: bytes) -> None:
    try:
        decode(payload, 150)
    except InputRefused as exc:
        assert exc.code in ("size", "depth", "utf8", "json", "number")


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


TRICKY = st.text(alphabet='[]{}"\\,:ab\n\u4e2d', max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TRICKY
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSONISH)
def test_json_within_bounds_decodes_as_json_loads_does(value: Any) -> None:
    payload = json.dumps(value).encode()
    assert nesting_depth(payload) == _depth(value)
    assert decode(payload, len(payload)) == json.loads(payload)


# -- hostile messages through a real broker -------------------------------------------

NAMES = ["open", "mode", "registry", "revoke", "ping", "reboot", "x"]
KEYS = st.sampled_from(["req", "ts", "mode", "by", "card", "jti", "type", "version", "persons"])
VALUES = st.sampled_from(["locked", "free", "snapshot", "delta", "r", "", "\n"]) | SCALARS
COMMANDISH = st.recursive(
    VALUES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=12,
)
RAW_TOKENS = st.sampled_from(
    [b"NaN", b"Infinity", b"1e999", b"9" * 400, b"[" * 5000, b"{", b'"', b"\\", b"\xff", b"\x00"]
)
PAYLOADS = (
    st.binary(max_size=120)
    | COMMANDISH.map(lambda v: json.dumps(v).encode())
    | st.lists(RAW_TOKENS | st.binary(max_size=8), max_size=6).map(b"".join)
    | st.builds(lambda n: b"[" * n + b"]" * n, st.integers(MAX_DEPTH - 2, 60_000))
    | st.builds(
        lambda key, digits: json.dumps({"req": "h", key: 0}).encode().replace(b"0", digits),
        KEYS,
        st.sampled_from([b"NaN", b"-Infinity", b"1" * 400, b"1e400"]),
    )
)


class Sender:
    """One connection for many publishes (``publish`` connects anew each time: slow)."""

    def __init__(self, port: int):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=30)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Sync:
    """After each hostile message a ping: its answer proves the message was dealt with."""

    def __init__(self, remote: Remote):
        self.remote = remote
        self.sender = Sender(remote.broker.port)

    def counts(self) -> int:
        c = self.remote.commands
        return c.refused + c.applied

    def ping(self, before: int) -> list[dict[str, Any]]:
        """Ping; the results after the first ``before`` ones, without the ping's own."""
        req = f"sync-{uuid.uuid4().hex[:12]}"
        self.sender.send(f"{ROOT}/cmd/ping", json.dumps({"req": req}).encode())

        def answered() -> bool:
            return any(r["req"] == req for r in self.remote.results()[before:])

        wait_until(answered, "the ping's answer", timeout=60)
        got = self.remote.results()[before:]
        assert got[-1]["req"] == req and got[-1]["ok"] is True
        return got[:-1]


def test_hostile_payloads_on_every_topic_never_end_the_session(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    sync = Sync(remote)

    def registry_version() -> int:
        ctl = remote.rig.controller
        return int(ctl.submit(lambda: registry_sync.applied_version(ctl.ledger.conn)).result(10))

    try:
        sync.ping(0)
        topics = st.sampled_from([f"{ROOT}/cmd/{n}" for n in NAMES] + [REGISTRY])

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(topic=topics, payload=PAYLOADS, retain=st.booleans())
        def one(topic: str, payload: bytes, retain: bool) -> None:
            before, version = sync.counts(), registry_version()
            results = len(remote.results())
            sync.sender.send(topic, payload, retain=retain)
            answers = sync.ping(results)
            if not payload:  # an empty message clears a retained one: ignored
                assert answers == [] and sync.counts() - before == 1
            elif topic == REGISTRY:  # refused and counted, or (a valid message) applied
                assert answers == []
                applied = registry_version() != version
                assert sync.counts() - before == (1 if applied else 2)
            else:
                # every command is answered: refused (and counted) or applied
                assert len(answers) == 1 and isinstance(answers[0]["ok"], bool)
                assert sync.counts() - before == 2
            assert remote.publisher.sessions == 1

        one()
        # events still flow
        remote.rig.controller.put(Reading("device", DeviceHealth(False, "after the storm"), "qr"))
        remote.col.wait_for(
            lambda m: any(e.get("detail") == "after the storm" for e in remote.col.events()), 30
        )
        assert remote.publisher.sessions == 1 and remote.publisher.connected.is_set()
        assert remote.commands.refused > 0 and remote.commands.refusals["error"] == 0
    finally:
        sync.sender.close()
        remote.close()


def test_the_deep_and_the_400_digit_payloads_retained(tmp_path: Path) -> None:
    """Retained, they come again at every reconnect: refused each time, delivery goes on."""
    remote = Remote(tmp_path, door=True)
    c = remote.commands
    try:
        publish(remote.broker.port, f"{ROOT}/cmd/ping", DEEP_COMMAND, retain=True)
        publish(remote.broker.port, f"{ROOT}/cmd/open", LONG_TS, retain=True)
        publish(remote.broker.port, f"{ROOT}/cmd/mode", DEEP, retain=True)
        publish(remote.broker.port, REGISTRY, DEEP_OBJECT, retain=True)
        remote.col.wait_for(lambda m: len(remote.results()) >= 3, timeout=30)
        live = remote.results()
        errors = {
            "nested too deep (30000 levels; limit 32)",
            "integer out of range (400 digits; limit 2**53)",
            "payload too large (100000 bytes; limit 65536)",
        }
        assert [r["ok"] for r in live] == [False] * 3 and {r["error"] for r in live} == errors
        wait_until(lambda: c.refusals["depth"] == 2, "the deep snapshot refused")
        assert remote.publisher.sessions == 1
        for n in (2, 3):  # two reconnects: the broker hands the retained copies over
            assert remote.door is not None
            before = len(remote.results())
            remote.door.shut()
            wait_until(lambda: not remote.publisher.connected.is_set(), "a disconnection")
            remote.door.open()
            assert remote.publisher.connected.wait(30)
            remote.col.wait_for(lambda m, b=before: len(remote.results()) >= b + 3, 30)
            assert {r["error"] for r in remote.results()[before:]} == errors
            wait_until(lambda n=n: c.refusals["depth"] == 2 * n, "the snapshot refused again")
            remote.rig.controller.put(Reading("device", DeviceHealth(n == 3, f"up {n}"), "qr"))
            remote.col.wait_for(
                lambda m, n=n: any(e.get("detail") == f"up {n}" for e in remote.col.events()), 30
            )
            assert remote.send("ping", {"req": f"p{n}"})["ok"] is True
            assert remote.publisher.sessions == n
        assert c.refusals == {"depth": 6, "number": 3, "size": 3} and c.refused == 12
    finally:
        remote.close()


def test_a_10_mb_command_is_refused(remote_plain: Remote) -> None:
    remote = remote_plain
    huge = json.dumps({"req": "big", "pad": "x" * (10 * 1024 * 1024)}).encode()
    result = remote.send("ping", huge)
    assert result["ok"] is False and result["error"].startswith("payload too large (10485")
    assert remote.commands.refusals["size"] == 1
    assert remote.send("ping", {"req": "small"})["ok"] is True
    assert remote.publisher.sessions == 1


def test_the_registry_topic_is_guarded_with_its_own_size_limit(tmp_path: Path) -> None:
    remote = Remote(tmp_path, registry_max_bytes=4096)
    try:
        c = remote.commands
        publish(remote.broker.port, REGISTRY, b"[" * 2000 + b"]" * 2000, retain=True)
        wait_until(lambda: c.refusals["depth"] == 1, "the deep snapshot refused")
        big = {"type": "snapshot", "version": 5, "persons": [{"id": f"P{i}"} for i in range(400)]}
        publish(remote.broker.port, REGISTRY, big, retain=True)
        wait_until(lambda: c.refusals["size"] == 1, "the big snapshot refused")
        nan = b'{"type": "snapshot", "version": NaN}'
        publish(remote.broker.port, REGISTRY, nan, retain=True)
        wait_until(lambda: c.refusals["number"] == 1, "the NaN version refused")
        small = {"type": "snapshot", "version": 6, "persons": [{"id": "P1", "cards": ["AA01"]}]}
        publish(remote.broker.port, REGISTRY, small, retain=True)
        remote.col.wait_for(
            lambda m: any(s.get("registry_version") == 6 for s in remote.statuses()), 30
        )
        # a delta on cmd/registry has the registry's limit, not the 64 KiB of commands
        delta = {"req": "d1", "type": "delta", "version": 7, "persons": [], "pad": "x" * 5000}
        assert "payload too large" in remote.send("registry", delta)["error"]
        assert c.refused == 4 and remote.publisher.sessions == 1
    finally:
        remote.close()


@pytest.fixture
def remote_plain(tmp_path: Path) -> Any:
    r = Remote(tmp_path)
    yield r
    r.close()
