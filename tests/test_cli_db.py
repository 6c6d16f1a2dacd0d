"""``gated db check|recover`` on a real database file damaged in the middle, and ``gated run``
refusing it with the command to run.

The database is made by the gate's own code (ledger and registry), then pages in the
middle of the file are overwritten with random bytes, the header left intact, as a
failing SD card or a power cut during a write leaves it.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from gated.clock import FakeClock
from gated.events import parse_event
from gated.ledger import Ledger
from gated.registry import Person, Registry
from gated.storage import connect
from tests.support.daemon import Daemon
from tests.support.gate_config import write_sim_gate
from tests.support.ledger_file import ledger_events

EVENTS = 3000
PEOPLE = 300


def write_config(tmp_path: Path, lines: list[dict[str, object]], exit_when_done: bool) -> Path:
    return write_sim_gate(
        tmp_path, lines, turnstile={"open_s": 1.0}, sim={"exit_when_done": exit_when_done}
    )


def make_database(db: Path) -> None:
    """A gate's database: a registry of 300 people and 3000 decisions over 4 boots."""
    conn = connect(db)
    conn.execute("PRAGMA synchronous=OFF")  # only to build the file quickly
    ledger = Ledger(conn, site="s1", gate="g1", clock=FakeClock())
    Registry(conn).apply(
        [
            Person(f"P{i}", f"Person {i}", "320623199001011234", "1-101", f"H{i}", "resident")
            for i in range(PEOPLE)
        ],
        {f"{i:010X}": f"P{i}" for i in range(PEOPLE)},
        "2026-01-01T00:00:00Z",
    )
    for i in range(EVENTS):
        if i % 750 == 0:
            ledger.start_boot()
        ledger.append(
            parse_event(
                {
                    "kind": "decision",
                    "direction": "in",
                    "decision": "granted",
                    "reasons": [],
                    "person": {"id": f"P{i % PEOPLE}", "name": "x"},
                    "credential": {"kind": "card", "ref": f"{i % PEOPLE:010X}", "color": "green"},
                    "temperature_c": 36.5,
                    "readings_c": [36.5],
                    "ref": None,
                    "guard": None,
                },
                stamped=False,
            )
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def damage(db: Path, pages: int = 4) -> None:
    """Overwrite ``pages`` pages in the middle of the file with random bytes."""
    size = db.stat().st_size
    total = size // 4096
    rng = random.Random(7)
    with open(db, "r+b") as f:
        for n in range(pages):
            page = total // 3 + n * (total // 3 // pages)
            f.seek(page * 4096)
            f.write(rng.randbytes(4096))


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    make_database(tmp_path / "gated.db")
    damage(tmp_path / "gated.db")
    return write_config(tmp_path, [], exit_when_done=True)


def gated(*args: str) -> tuple[int, str]:
    d = Daemon(*args)
    code = d.finish(timeout=120)
    return code, d.output()


def test_check_says_ok_for_a_sound_database(tmp_path: Path) -> None:
    make_database(tmp_path / "gated.db")
    config = write_config(tmp_path, [], exit_when_done=True)
    code, out = gated("db", "check", "-c", str(config))
    assert code == 0 and out.strip().endswith("ok (integrity_check)"), out
    code, out = gated("db", "check", "--quick", "-c", str(config))
    assert code == 0 and "ok (quick_check)" in out, out


def test_gated_run_refuses_a_damaged_database_in_one_line_naming_the_commands(
    damaged: Path,
) -> None:
    before = (damaged.parent / "gated.db").read_bytes()
    code, out = gated("run", "-c", str(damaged))
    assert code == 1
    (line,) = out.splitlines()
    assert line.startswith(f"gated: the database {damaged.parent / 'gated.db'} is damaged")
    assert f"gated db check -c {damaged}" in line and f"gated db recover -c {damaged}" in line
    assert (damaged.parent / "gated.db").read_bytes() == before  # not written to


def test_check_finds_the_damage_and_recover_saves_most_of_the_ledger_and_the_registry(
    damaged: Path,
) -> None:
    db = damaged.parent / "gated.db"
    code, out = gated("db", "check", "-c", str(damaged))
    assert code == 1 and "DAMAGED" in out and f"gated db recover -c {damaged}" in out, out

    code, out = gated("db", "recover", "-c", str(damaged))
    assert code == 0, out
    kept = sorted(p.name for p in db.parent.glob("gated.db.damaged-*"))
    assert kept and kept[0].startswith("gated.db.damaged-2"), kept
    assert gated("db", "check", "-c", str(damaged))[0] == 0

    events = ledger_events(db)
    decisions = [e for e in events if e["kind"] == "decision"]
    assert len(decisions) >= 0.9 * EVENTS, len(decisions)
    *_, recovered = events
    assert recovered["kind"] == "device" and recovered["device"] == "storage"
    assert recovered["saved"]["events"] == len(decisions)
    assert recovered["saved"]["persons"] >= 0.9 * PEOPLE
    assert recovered["seq"] == EVENTS + 1  # after the highest seq there was
    assert f"{len(decisions)} ledger events" in recovered["detail"]
    assert recovered["boot"] == 4 and recovered["damaged_file"] == kept[0]
    conn = sqlite3.connect(db)
    try:
        orphans = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE seq NOT IN (SELECT seq FROM events)"
        ).fetchone()[0]
        persons = conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0]
    finally:
        conn.close()
    assert orphans == 0 and persons == recovered["saved"]["persons"]

    # The gate starts on the rebuilt file and goes on after it: seq and boot.
    config = write_config(
        damaged.parent,
        [{"t": 0.1, "temp": 36.5}, {"t": 0.3, "card": "FF00FF00FF"}],
        exit_when_done=True,
    )
    code, out = gated("run", "-c", str(config))
    assert code == 0, out
    after = ledger_events(db)[len(events) :]
    assert [e["seq"] for e in after] == list(range(EVENTS + 2, EVENTS + 2 + len(after)))
    assert after and all(e["boot"] == 5 for e in after)


def test_recover_refuses_while_the_gate_has_the_database_open(tmp_path: Path) -> None:
    make_database(tmp_path / "gated.db")
    lines = [{"t": 60.0, "temp": 36.5}]  # something to wait for: it keeps running
    config = write_config(tmp_path, lines, exit_when_done=False)
    gate = Daemon("run", "-c", str(config))
    try:
        gate.wait_for(lambda out: any("running" in x for x in out))
        code, out = gated("db", "recover", "-c", str(config))
        assert code == 1 and "open in another process" in out and "stop the gate" in out, out
        assert not list(tmp_path.glob("gated.db.damaged-*"))
    finally:
        assert gate.stop() == 0, gate.output()
    assert gated("db", "check", "-c", str(config))[0] == 0
