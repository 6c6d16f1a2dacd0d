"""``gated demo --hub``: a broker, two simulated gates and a hub, started and stopped as one."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gated.cli.children import pick_port
from gated.cli.demo_hub import find_mosquitto, mosquitto_or_error
from gated.errors import GatedError
from tests.support.mosquitto import MOSQUITTO
from tests.support.waiting import wait_until

GATES = ("north-in", "north-out")
DEMO = [sys.executable, "-m", "gated.cli", "demo", "--hub"]

needs_mosquitto = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="mosquitto is not installed (scripts/setup.sh installs it)"
)


def rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of a SQLite file, read-only (none while it does not exist or lacks the table)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def ledger(work: Path, gate: str) -> list[tuple[object, ...]]:
    return rows(work / gate / "demo.db", "SELECT seq, id FROM events ORDER BY seq")


def hub_rows(work: Path, gate: str) -> list[tuple[object, ...]]:
    return rows(
        work / "hub" / "hub.db",
        "SELECT seq, id FROM hub_events WHERE site = 'north' AND gate = ? ORDER BY seq",
        gate,
    )


def children(pid: int) -> dict[int, str]:
    """The live processes whose parent is ``pid``: pid -> command name (zombies left out)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry)] = comm
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def start(work: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The demo in the background, its output in a file (no pipe to fill)."""
    out = work.parent / f"{work.name}.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [*DEMO, "--workdir", str(work), *args], stdout=sink, stderr=subprocess.STDOUT
        )
    return proc, out


@needs_mosquitto
def test_the_hub_holds_every_event_of_both_gates_and_the_demo_exits(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = subprocess.run(
        [*DEMO, "--exit-when-done", "--speed", "20", "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for gate in GATES:
        mine = ledger(work, gate)
        assert len(mine) > 20, gate  # the whole scenario, not a first event or two
        assert hub_rows(work, gate) == mine, gate  # each event once, none lacking
    summary = result.stdout.strip().splitlines()[-1]
    counts = {g: len(ledger(work, g)) for g in GATES}
    assert summary == (
        "gated demo --hub: the hub holds every event of both gates: "
        f"north/north-in {counts['north-in']}, north/north-out {counts['north-out']}"
    )
    # Each gate's lines say which gate; the URLs are printed.
    assert re.search(r"^north-in +#1 .*guard_on", result.stdout, re.M), result.stdout
    assert re.search(r"^north-out +#1 .*guard_on", result.stdout, re.M), result.stdout
    assert re.search(r"fleet page +http://127\.0\.0\.1:\d+", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@needs_mosquitto
def test_sigterm_stops_the_broker_the_gates_and_the_hub(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc, out = start(work)
    try:
        # Running: a broker, a hub and two gates, and the hub has heard from both gates.
        parts = wait_until(
            lambda: len(c := children(proc.pid)) == 4 and c, "the demo's four parts", 60
        )
        assert sorted(parts.values()).count("mosquitto") == 1, parts
        wait_until(lambda: all(hub_rows(work, g) for g in GATES), "events at the hub", 60)
        # Each gate's screen answers at the URL printed.
        for gate in GATES:
            m = re.search(rf"{gate} screen +(http://\S+)", out.read_text())
            assert m, out.read_text()
            with urllib.request.urlopen(m.group(1) + "/healthz", timeout=10) as page:
                assert page.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [f"{pid} {name}" for pid, name in parts.items() if alive(pid)]
    assert not left, f"left running: {left}\n{out.read_text()}"
    assert "stopped on SIGTERM" in out.read_text()
    # The gates stopped before the broker went: their last words reached the hub.
    for gate in GATES:
        (state,) = rows(work / "hub" / "hub.db", "SELECT state FROM hub_gates WHERE gate = ?", gate)
        assert state == ("offline",), gate


@needs_mosquitto
def test_kill_9_of_the_demo_leaves_no_broker_or_gate_behind(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc, _ = start(work)
    try:
        parts = wait_until(
            lambda: len(c := children(proc.pid)) == 4 and c, "the demo's four parts", 60
        )
    finally:
        proc.kill()
        proc.wait()
    try:
        wait_until(
            lambda: not any(alive(pid) for pid in parts), "every part ending after the demo", 30
        )
    finally:
        for pid in parts:  # orphans of a failed run are this test's to end
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_missing_mosquitto_is_one_line_saying_how_to_install_it(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "no-such-mosquitto")
    assert find_mosquitto(str(tmp_path), nowhere) is None
    with pytest.raises(GatedError, match=r"apt-get install mosquitto$"):
        mosquitto_or_error(str(tmp_path), nowhere)
    binary = tmp_path / "mosquitto"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_mosquitto(str(tmp_path), nowhere) == str(binary)


def test_a_port_in_use_is_left_for_a_free_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        taken: set[int] = set()
        other = pick_port(port, taken)
        assert other != port and taken == {other}
        assert pick_port(other, taken) != other  # nor one the demo has already given out
