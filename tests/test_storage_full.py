"""A database that takes no commit (full disk): the gate stays locked, says so, recovers.

The disk is made full with SQLite's own ``PRAGMA max_page_count`` on the gate's real
connection: commits then fail with SQLITE_FULL ("database or disk is full") exactly as
on a full SD card, and raising the limit gives the room back. The controller runs its
real loop on a thread; its inputs go in as a driver's ``emit`` puts them.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.common.base import Reading
from gated.clock import iso_utc
from gated.ledger import Ledger
from gated.storage_watch import CommitFailed
from tests.support.events import event
from tests.support.gate_process import GateProcess, arrival
from tests.support.remote import Remote
from tests.support.rig import Rig
from tests.support.status_gate import Gate
from tests.support.waiting import wait_until

GREEN = "0A1B2C3D4E"


def fill(ledger: Ledger) -> None:
    """Cap the file at its size and fill what is left with small events: the next event
    finds no room. Tried until fifty in a row fail, so every table an event touches
    (not only the random place of its id in an index) is full."""
    conn = ledger.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    misses = 0
    while misses < 50:
        try:
            ledger.append(event("device", device="filler", ok=True))
            misses = 0
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc)
            misses += 1


def make_room(conn: sqlite3.Connection) -> None:
    """Space is back (an operator freed the card)."""
    conn.execute("PRAGMA max_page_count = 1073741823")


class Loop:
    """The rig's controller running its own loop on a thread, as ``gated run`` does."""

    def __init__(self, rig: Rig):
        self.rig = rig
        self.ctl = rig.controller
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.ctl.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def on_loop(self, fn: Any) -> Any:
        """Run ``fn`` on the controller thread and wait for it (inputs before it are done)."""
        return self.ctl.submit(fn).result(timeout=30)

    def arrive(self, card: str = GREEN, temp: float = 36.5) -> None:
        self.ctl.put(Reading("temp", temp, "thermometer"))
        self.ctl.put(Reading("card", card, "card"))
        self.on_loop(lambda: None)

    def storage(self) -> dict[str, Any]:
        devices: dict[str, Any] = self.on_loop(self.ctl.desk.snapshot)["devices"]
        return dict(devices["storage"])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def loop(rig: Rig) -> Iterator[Loop]:
    lp = Loop(rig)
    yield lp
    lp.close()


def decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "decision"]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_session_that_cannot_be_committed_leaves_the_gate_locked_and_asks_for_the_guard(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    rig = loop.rig
    assert loop.storage() == {"ok": True, "detail": ""}
    loop.on_loop(lambda: fill(rig.ledger))
    caplog.set_level(logging.INFO)
    loop.arrive()
    assert "open" not in rig.turnstile.history and rig.turnstile.state == "locked"
    assert rig.prompter.played[-1] == "wait_guard"
    assert rig.events == [] and decisions(rig.stored()) == []
    storage = loop.storage()
    assert storage["ok"] is False and "database or disk is full" in storage["detail"]
    # No traceback per session: one line for the first, then one a minute with the count.
    for _ in range(20):
        loop.arrive()
    assert "open" not in rig.turnstile.history
    lines = errors(caplog)
    assert len(lines) == 1 and "could not be committed" in lines[0], lines
    assert not any(r.exc_info for r in caplog.records)
    rig.clock.advance(61)
    loop.arrive()
    lines = errors(caplog)
    assert len(lines) == 2 and "22 events not committed" in lines[1], lines
    assert loop.on_loop(rig.controller.desk.snapshot)["counters"]["not_committed"] == 22


def test_once_there_is_room_again_the_next_session_goes_through_and_one_alarm_tells_of_it(
    loop: Loop,
) -> None:
    rig = loop.rig
    loop.on_loop(lambda: fill(rig.ledger))
    started = rig.clock.time()
    for _ in range(3):
        loop.arrive()
        rig.clock.advance(10)
    loop.on_loop(lambda: make_room(rig.conn))
    loop.arrive()
    decision, alarm, device = rig.events
    assert decision["decision"] == "granted" and rig.turnstile.state == "open"
    assert alarm["kind"] == "alarm" and alarm["alarm"] == "device"
    assert alarm["device"] == "storage" and alarm["not_written"] == 3
    assert "3 not written" in alarm["detail"] and "database or disk is full" in alarm["detail"]
    assert alarm["since"] == iso_utc(started) and alarm["ts"] == iso_utc(started + 30)
    assert device["kind"] == "device" and device["ok"] is True and device["ref"] == alarm["id"]
    assert loop.storage() == {"ok": True, "detail": ""}
    seqs = [e["seq"] for e in rig.stored()]
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free: nothing half-written


def test_an_open_grant_still_locks_when_its_passage_cannot_be_recorded(loop: Loop) -> None:
    rig = loop.rig
    loop.arrive()
    assert rig.turnstile.state == "open"
    loop.on_loop(lambda: fill(rig.ledger))
    rig.clock.advance(5.0)  # the open window runs out; its passage=false is not committed
    wait_until(lambda: rig.turnstile.state == "locked", what="the turnstile to lock")
    assert loop.storage()["ok"] is False


def test_a_mode_change_that_cannot_be_committed_changes_nothing(loop: Loop) -> None:
    rig = loop.rig
    loop.on_loop(lambda: fill(rig.ledger))
    with pytest.raises(CommitFailed):
        loop.on_loop(lambda: rig.controller.desk.set_mode("free", "test"))
    assert rig.controller.mode == "normal" and rig.turnstile.state == "locked"
    loop.arrive()
    assert "open" not in rig.turnstile.history


# ---- the daemon's screen ------------------------------------------------------------------


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.stop()


def read_sse(resp: http.client.HTTPResponse) -> Iterator[tuple[str, Any]]:
    kind = ""
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


def test_healthz_is_503_and_every_view_shows_storage_failed_until_there_is_room(
    gate: Gate,
) -> None:
    ctl = gate.app.controller
    status, _, body = gate.get("/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    assert gate.state()["devices"]["storage"] == {"ok": True, "detail": ""}
    stream = http.client.HTTPConnection("127.0.0.1", gate.port, timeout=30)
    stream.request("GET", "/api/events")
    events = read_sse(stream.getresponse())
    assert next(events)[0] == "hello"

    ctl.submit(lambda: fill(gate.app.ledger)).result(timeout=30)
    gate.arrive(36.5, GREEN)
    # The screen is told at once, though no event says so.
    kind, state = next(events)
    while kind != "state" or state["devices"]["storage"]["ok"]:
        kind, state = next(events)
    assert "database or disk is full" in state["devices"]["storage"]["detail"]
    stream.close()
    status, _, body = gate.get("/healthz")
    health = json.loads(body)
    assert status == 503 and health["ok"] is False
    assert health["error"].startswith("storage: no event can be committed")
    assert gate.state()["devices"]["storage"]["ok"] is False
    metrics = gate.get("/metrics")[2].decode()
    assert 'gated_device_up{device="storage"} 0.0' in metrics
    assert decisions(gate.ledger()) == []

    ctl.submit(lambda: make_room(gate.app.conn)).result(timeout=30)
    gate.arrive(36.5, GREEN)
    alarm = gate.wait_event(lambda e: e.get("alarm") == "device", "the storage alarm")
    assert alarm["device"] == "storage" and alarm["not_written"] == 1
    assert gate.get("/healthz")[0] == 200
    assert gate.state()["devices"]["storage"]["ok"] is True
    assert 'gated_device_up{device="storage"} 1.0' in gate.get("/metrics")[2].decode()


# ---- a real full file system under ``gated run`` ----------------------------------------


@pytest.fixture
def small_card(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs the gate keeps its files on: a small SD card that can fill up."""
    mnt = tmp_path / "card"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(path: Path) -> None:
    """Write ``path`` until the file system has no room left."""
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return


def test_gated_run_on_a_full_card_stays_up_locked_and_503_and_recovers_when_room_is_back(
    small_card: Path,
) -> None:
    gp = GateProcess(small_card)
    lines: list[dict[str, Any]] = []
    for i in range(240):  # an arrival every half second for two minutes
        lines += arrival(i * 0.5, 36.5, GREEN, passage=True)
    gp.play(lines)
    gp.start()
    try:
        gp.wait_event(lambda e: e["kind"] == "decision" and e["seq"] >= 3, "three decisions")
        filler = small_card / "filler"
        fill_disk(filler)

        def unhealthy() -> dict[str, Any] | None:
            status, body = gp.get("/healthz")
            health: dict[str, Any] = json.loads(body)
            return health if status == 503 else None

        health = wait_until(unhealthy, what="/healthz 503")
        assert health["error"].startswith("storage: no event can be committed")
        assert "database or disk is full" in health["error"]
        # Sessions keep coming and keep failing, quietly.
        wait_until(
            lambda: (h := unhealthy()) and int(h["error"].split("(")[-1].split()[0]) >= 5,
            what="five sessions not committed",
        )
        _, body = gp.get("/api/state")
        assert json.loads(body)["devices"]["storage"]["ok"] is False
        assert gp.daemon is not None
        out = gp.daemon.output()
        assert "Traceback" not in out and "controller step failed" not in out
        assert out.count("storage: an event could not be committed") == 1, out
        last_seq = max(e["seq"] for e in gp.ledger())

        filler.unlink()
        wait_until(lambda: gp.get("/healthz")[0] == 200, what="/healthz 200 again")
        alarm = gp.wait_event(lambda e: e.get("alarm") == "device", "the storage alarm")
        assert alarm["device"] == "storage" and alarm["not_written"] >= 5
        gp.wait_event(lambda e: e["kind"] == "decision" and e["seq"] > alarm["seq"], "a decision")
        seqs = [e["seq"] for e in gp.ledger()]
        assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] > last_seq
        assert not [e for e in gp.ledger() if e["kind"] == "alarm" and e["alarm"] != "device"]
    finally:
        gp.stop()
    assert "Traceback" not in gp.daemon.output()


@pytest.fixture
def ext4_card(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An 8 MB ext4 file system on a loop device, mounted ``errors=remount-ro`` as Raspberry
    Pi OS mounts its root; with the file that makes the kernel take it for a failing card."""
    image, mnt = tmp_path / "card.img", tmp_path / "card"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no mkfs.ext4 here: {made.stderr.strip()}")
    mounted = subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        source = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True
        ).stdout.strip()
        trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip("this kernel has no ext4 trigger_fs_error")
        yield mnt, trigger
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_gated_run_on_a_card_gone_read_only_stays_up_locked_and_503(
    ext4_card: tuple[Path, Path],
) -> None:
    mnt, trigger = ext4_card
    gp = GateProcess(mnt)
    lines: list[dict[str, Any]] = []
    for i in range(240):
        lines += arrival(i * 0.5, 36.5, GREEN, passage=True)
    gp.play(lines)
    gp.start()
    try:
        gp.wait_event(lambda e: e["kind"] == "decision" and e["seq"] >= 3, "three decisions")
        trigger.write_text("gated test: the card fails\n")  # ext4 error: remounted read-only

        def unhealthy() -> dict[str, Any] | None:
            status, body = gp.get("/healthz")
            health: dict[str, Any] = json.loads(body)
            return health if status == 503 else None

        health = wait_until(unhealthy, what="/healthz 503")
        assert health["error"].startswith("storage: no event can be committed")
        wait_until(
            lambda: (h := unhealthy()) and int(h["error"].split("(")[-1].split()[0]) >= 3,
            what="three sessions not committed",
        )
        assert gp.daemon is not None
        out = gp.daemon.output()
        assert "Traceback" not in out and "controller step failed" not in out
        assert out.count("storage: an event could not be committed") == 1, out
    finally:
        gp.stop()
    assert "Traceback" not in gp.daemon.output()


# ---- T/status over a real broker --------------------------------------------------------


def test_t_status_lists_storage_and_says_when_no_event_can_be_committed(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    try:
        ctl = remote.rig.controller

        def storage_is(ok: bool) -> Any:
            return lambda m: any(
                s.get("devices", {}).get("storage", {}).get("ok") is ok for s in remote.statuses()
            )

        remote.col.wait_for(storage_is(True), 10)
        ctl.submit(lambda: fill(remote.rig.ledger)).result(timeout=30)
        refused = remote.send("mode", {"req": "m1", "mode": "free"})
        assert refused["ok"] is False and "not committed" in refused["error"]
        assert ctl.mode == "normal" and remote.rig.turnstile.state == "locked"
        # no event says so: the status follows the failure by itself
        remote.col.wait_for(storage_is(False), 10)
        ctl.submit(lambda: make_room(remote.rig.conn)).result(timeout=30)
        assert remote.send("mode", {"req": "m2", "mode": "locked"})["ok"] is True
        remote.col.wait_for(
            lambda m: any(
                s.get("mode") == "locked" and s["devices"]["storage"]["ok"]
                for s in remote.statuses()
            ),
            10,
        )

        def alarms() -> list[dict[str, Any]]:
            with remote.col.cond:
                found = [json.loads(p) for t, p, _ in remote.col.messages if t.endswith("/alarm")]
            return [a for a in found if a["alarm"] == "device"]

        remote.col.wait_for(lambda m: alarms(), 10)
        (alarm,) = alarms()
        assert alarm["device"] == "storage" and alarm["not_written"] == 1
    finally:
        remote.close()
