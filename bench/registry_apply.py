"""Bench: a large registry snapshot applied while the controller keeps deciding.

A real controller runs on its thread (real SQLite file, ``synchronous=FULL``) with a
registry of ``--persons`` people at version 1. A feeder shows a temperature and a
registered card every ``--every-ms``; the latency of each is from the card reading
put on the queue to its decision event committed. Then snapshot 2 (every person,
``--changed`` of them with a new unit) is applied, in steps between verdicts
(``registry_build.Snapshots``, as the gate does) and, for comparison, in one
controller step as before. Printed: the JSON parse off the controller thread, the
total apply time, and the worst and p99 verdict latency while each apply ran.

    .venv/bin/python bench/registry_apply.py [--persons 200000] [--changed 0.01] [--db PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from drivers.common.base import Reading
from drivers.sim import SimPrompter, SimTurnstile
from gated import registry_build
from gated.clock import SystemClock
from gated.config import config_from_dict
from gated.controller import Controller
from gated.ledger import Ledger
from gated.mqtt import registry_sync
from gated.passes import PassVerifier
from gated.registry import Registry
from gated.storage import connect

WHEN = "2026-03-01T00:00:00+00:00"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if values else 0.0


def snapshot(version: int, n: int, changed: int) -> bytes:
    persons = [
        {
            "id": f"P{i}",
            "name": f"Person {i}",
            "id_number": f"3206{i:014d}",
            "unit": f"{i // 10}-{i % 10}" + ("b" if i < changed else ""),
            "household": f"H{i // 3}",
            "category": "resident",
            "cards": [f"{i:010X}"],
        }
        for i in range(n)
    ]
    return json.dumps({"type": "snapshot", "version": version, "persons": persons}).encode()


class Feeder(threading.Thread):
    """Shows a card every ``every_s`` and records put -> decision committed, in ms."""

    def __init__(self, ctl: Controller, n: int, every_s: float):
        super().__init__(daemon=True)
        self.ctl, self.n, self.every_s = ctl, n, every_s
        self.stop = threading.Event()
        #: (sent at, put -> decided ms) of each verdict
        self.latencies: list[tuple[float, float]] = []
        self.sent: dict[str, float] = {}
        ctl.observers.append(self._decided)

    def _decided(self, event: dict[str, Any]) -> None:
        if event["kind"] == "decision" and event["credential"]:
            t0 = self.sent.pop(event["credential"]["ref"], None)
            if t0 is not None:
                self.latencies.append((t0, (time.perf_counter() - t0) * 1000))

    def run(self) -> None:
        i = 0
        while not self.stop.wait(self.every_s):
            uid = f"{(i * 7919) % self.n:010X}"
            i += 1
            self.ctl.put(Reading("temp", 36.6, "bench"))
            self.sent[uid] = time.perf_counter()
            self.ctl.put(Reading("card", uid, "bench"))
            self.ctl.put(Reading("passage", True, "bench"))


def run_apply(
    ctl: Controller,
    snaps: registry_build.Snapshots,
    payload: bytes,
    chunked: bool,
    every_s: float,
    n: int,
) -> tuple[float, float, list[float]]:
    t0 = time.perf_counter()
    change = registry_sync.parse(json.loads(payload))
    parse_s = time.perf_counter() - t0
    feeder = Feeder(ctl, n, every_s)
    feeder.start()
    time.sleep(0.5)
    t1 = time.perf_counter()
    if chunked:
        fut = snaps.apply(change)
    else:
        fut = ctl.submit(lambda: registry_sync.apply(ctl.ledger.conn, change, WHEN))
    fut.result(600)
    t2 = time.perf_counter()
    apply_s = t2 - t1
    feeder.stop.set()
    feeder.join()
    ctl.submit(lambda: None).result(60)  # the cards shown during the apply are decided
    during = [ms for sent, ms in feeder.latencies if t1 <= sent <= t2]
    ctl.observers.remove(feeder._decided)
    return parse_s, apply_s, during


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of persons changed")
    parser.add_argument("--every-ms", type=float, default=20.0, help="a card every N ms")
    parser.add_argument("--db", help="database file (default: a temporary directory)")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="gated-bench-")
    work = Path(tmp.name)
    db = Path(args.db) if args.db else work / "bench.db"
    config = config_from_dict(
        {
            "gate": {"id": "g1", "site": "s1"},
            "storage": {"path": str(db)},
            "turnstile": {"driver": "sim"},
        },
        work / "bench.toml",
    )
    clock = SystemClock()
    conn = connect(db)
    ledger = Ledger(conn, site="s1", gate="g1", clock=clock)
    ledger.start_boot()
    n = args.persons
    changed = int(n * args.changed)
    registry_sync.apply(conn, registry_sync.parse(json.loads(snapshot(1, n, 0))), WHEN)
    ctl = Controller(
        config,
        ledger,
        Registry(conn),
        PassVerifier({}, 120),
        SimTurnstile("turnstile", lambda r: None),
        SimPrompter("prompter", lambda r: None),
        clock,
    )
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    snaps = registry_build.Snapshots(ctl.submit, conn, lambda: WHEN)
    print(f"registry            {n} persons and cards, snapshot changes {changed} of them")
    version = 1
    for label, chunked in (("in steps", True), ("one step (before)", False)):
        version += 1
        payload = snapshot(version, n, changed if version % 2 == 0 else 0)
        parse_s, apply_s, during = run_apply(ctl, snaps, payload, chunked, args.every_ms / 1000, n)
        print(
            f"{label:<19} payload {len(payload) / 1e6:.0f} MB, parse {parse_s:.2f} s (publisher"
            f" thread), apply {apply_s:.2f} s; verdicts during it: {len(during)},"
            f" worst {max(during, default=0):.1f} ms, p99 {pct(during, 99):.1f} ms,"
            f" p50 {pct(during, 50):.1f} ms"
        )
    stop.set()
    thread.join(10)
    conn.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
