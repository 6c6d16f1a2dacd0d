"""``gated run`` as a real process: clean stop on SIGTERM, nothing lost on ``kill -9``."""

from __future__ import annotations

import json
import random
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.gate_config import write_sim_gate


def write_gate(tmp_path: Path, sessions: int, spacing: float, extra: str = "") -> Path:
    lines = []
    for i in range(sessions):
        t = i * spacing
        uid = "0A1B2C3D4E" if i % 3 else "FF00FF00FF"  # nobody registered: denied
        lines += [
            {"t": t, "temp": 36.5},
            {"t": t + spacing / 4, "card": uid},
            {"t": t + spacing / 2, "passage": True},
        ]
    config = write_sim_gate(tmp_path, lines, turnstile={"open_s": 2.0})
    config.write_text(config.read_text() + extra)
    return config


def stored(db: Path) -> tuple[list[int], list[int], list[int]]:
    conn = sqlite3.connect(db)
    try:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
        outbox = [r[0] for r in conn.execute("SELECT seq FROM outbox ORDER BY seq")]
        boots = [json.loads(r[0])["boot"] for r in conn.execute("SELECT body FROM events")]
    finally:
        conn.close()
    return seqs, outbox, boots


def test_sigterm_stops_within_two_seconds_and_closes_the_database(tmp_path: Path) -> None:
    config = write_gate(tmp_path, sessions=50, spacing=0.2)
    daemon = Daemon("run", "-c", str(config))
    daemon.wait_for(lambda lines: len([x for x in lines if "decision" in x]) >= 2)
    sent = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.finish(timeout=5)
    took = time.monotonic() - sent
    assert code == 0, "\n".join(daemon.lines)
    assert took < 2.0, f"took {took:.2f}s to stop"
    assert any("relay de-energised, database closed" in x for x in daemon.lines)
    # The last connection closed cleanly: SQLite removed its write-ahead log.
    assert not (tmp_path / "gated.db-wal").exists()


@pytest.mark.slow
def test_kill_9_at_any_moment_loses_no_committed_event_and_seq_stays_gap_free(
    tmp_path: Path,
) -> None:
    # A broker that is never there: every event must keep its outbox row (with no
    # broker configured the ledger writes none).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = f'\n[mqtt]\nurls = ["mqtt://127.0.0.1:{port}"]\n'
    config = write_gate(tmp_path, sessions=400, spacing=0.04, extra=broker)
    rnd = random.Random(20261122)
    logged: set[int] = set()
    rounds = 6
    for _ in range(rounds):
        daemon = Daemon("run", "-c", str(config))
        start = max(logged, default=0)
        wanted = start + rnd.randint(5, 60)
        daemon.wait_for(lambda lines, w=wanted: any(f"#{w} " in x for x in lines))
        daemon.proc.kill()
        daemon.finish()
        logged.update(daemon.logged_seqs())
    seqs, outbox, boots = stored(tmp_path / "gated.db")
    assert seqs == list(range(1, len(seqs) + 1)), "seq has a gap"
    assert logged <= set(seqs), f"lost committed events: {sorted(logged - set(seqs))}"
    assert outbox == seqs, "an event lost its outbox row"
    assert sorted(set(boots)) == list(range(1, rounds + 1))
