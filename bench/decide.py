"""Bench: simulated sessions through session machine, policy, ledger and outbox.

Each session is a temperature, a credential (a card, or one QR pass in five) and a
passage, fed straight into the controller on a real SQLite file with
``synchronous=FULL``. Prints sessions/s and the p50/p99 of the decide latency (the
verdict's own look-ups and rules) and of decide + commit (until the event is durable).

    .venv/bin/python bench/decide.py [--sessions 10000] [--db PATH]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from drivers.common.base import Reading
from drivers.sim import SimPrompter, SimTurnstile
from gated.clock import SystemClock, clock_synced
from gated.config import config_from_dict
from gated.controller import Controller
from gated.ledger import Ledger
from gated.passes import PassVerifier, generate_keypair, issue_pass
from gated.registry import Person, Registry
from gated.storage import connect

GOAL_SESSIONS_S = 500
GOAL_P99_MS = 2.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--db", help="database file (default: a temporary directory)")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="gated-bench-")
    work = Path(tmp.name)
    db = Path(args.db) if args.db else work / "bench.db"
    key, pub = generate_keypair(work / "keys", "bench")
    config = config_from_dict(
        {
            "gate": {"id": "g1", "site": "s1"},
            "storage": {"path": str(db)},
            "turnstile": {"driver": "sim"},
            "passes": {"public_keys": {"bench": str(pub)}},
        },
        work / "bench.toml",
    )
    clock = SystemClock()
    conn = connect(db)
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    ledger = Ledger(conn, site="s1", gate="g1", clock=clock, clock_synced=clock_synced)
    ledger.start_boot()
    registry = Registry(conn)
    persons = [
        Person(
            f"P{i}",
            f"Person {i}",
            f"3206{i:014d}",
            f"{i // 10}-{i % 10}",
            f"H{i // 3}",
            "resident",
            "green",
        )
        for i in range(5000)
    ]
    registry.apply(persons, {f"{i:010X}": f"P{i}" for i in range(5000)}, "2026-01-01T00:00:00Z")
    verifier = PassVerifier(config.passes.public_keys, 120)
    controller = Controller(
        config,
        ledger,
        registry,
        verifier,
        SimTurnstile("turnstile", lambda r: None),
        SimPrompter("prompter", lambda r: None),
        clock,
    )
    rnd = random.Random(7)
    tokens = [
        issue_pass(key, kid="bench", sub=f"V{i}", hh=f"H{i}", col="green") for i in range(200)
    ]
    decide_ms: list[float] = []
    commit_ms: list[float] = []

    def capture(event: dict) -> None:  # type: ignore[type-arg]
        if event["kind"] == "decision":
            decide_ms.append(event["latency_ms"]["decide"])

    controller.observers.append(capture)
    started = time.perf_counter()
    for i in range(args.sessions):
        controller.handle(Reading("temp", round(rnd.uniform(36.0, 37.1), 1), "bench"))
        if i % 5 == 4:
            credential = Reading("qr", rnd.choice(tokens), "bench")
        else:
            credential = Reading("card", f"{rnd.randrange(5200):010X}", "bench")  # some unknown
        t0 = time.perf_counter()
        controller.handle(credential)
        commit_ms.append((time.perf_counter() - t0) * 1000)
        controller.handle(Reading("passage", True, "bench"))
        controller.tick()
    elapsed = time.perf_counter() - started
    rate = args.sessions / elapsed
    events = ledger.last_seq()
    backlog = ledger.backlog()
    conn.close()
    tmp.cleanup()
    p99 = pct(decide_ms, 99)
    print(
        f"sessions            {args.sessions} ({events} events, outbox {backlog}, "
        f"synchronous={'FULL' if sync == 2 else sync})"
    )
    print(
        f"sessions/s          {rate:,.0f}   (goal >= {GOAL_SESSIONS_S}: "
        f"{rate / GOAL_SESSIONS_S:.1f}x)"
    )
    print(
        f"decide p50/p99      {pct(decide_ms, 50):.3f} / {p99:.3f} ms   (goal p99 < "
        f"{GOAL_P99_MS} ms: {GOAL_P99_MS / p99:.1f}x headroom)"
    )
    print(
        f"decide+commit p50/p99 {pct(commit_ms, 50):.3f} / {pct(commit_ms, 99):.3f} ms "
        f"(mean {statistics.fmean(commit_ms):.3f})"
    )
    return 0 if rate >= GOAL_SESSIONS_S and p99 < GOAL_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
