"""Bench: how soon a gate's peers know what it did, and what sharing costs its decisions.

Real ``gated run`` processes on sim hardware (cards through the live feed, ``[sim]
input``), one real mosquitto: gate ``g`` of site s1 with three peers (``p1``..``p3``),
and three gates of another site s2 on the same broker and machine (``x1``..``x3``),
every gate with the site rules on (hard anti-passback, a household quota on the way
in, so each decision reads the site's facts) and each person shown once.

Three phases of ``--presentations`` cards at ``g``, each shown once the previous one's
decision reached the broker: everybody else idle; the three gates of s2 granting
continuously (``--rate`` a second each: the machine as loaded, nothing for ``g`` to
learn); then its three peers granting as fast (the same load, and all of it to learn).
Prints ``g``'s decide p50/p99 (``latency_ms.decide``) in each and the ratios; and, for
each grant at ``g``, how long after its commit (the event's ``ts``) peer ``p1`` knew
it: its ``through`` in p1's ``site_peers`` (p1's SQLite file, polled) and p1's ``T/status.peers``
``through`` (as the broker carried it), p50/p99, idle and busy.

    .venv/bin/python bench/site.py [--presentations 150] [--rate 10] [--gap 0.05]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.latency import pct
from tests.support.mosquitto import Mosquitto
from tests.support.site import Site

PEOPLE_EACH = 1200  # cards per gate: every presentation a new person


def people(prefix: str, n: int) -> list[str]:
    """``n`` green residents, each of a household of their own, cards ``<prefix>xxxxxxx``."""
    return [
        f"{prefix}{i},Person {prefix}{i},,{i},H{prefix}{i},resident,green,0,{prefix}{i:07X}"
        for i in range(n)
    ]


def ts_seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class PeerTables:
    """When gate ``peer``'s events are known in ``db``'s ``site_peers`` (its ``through``:
    every seq up to it taken), polled every 2 ms on a thread through a connection of its own."""

    def __init__(self, db: Path, peer: str):
        self.db, self.peer = db, peer
        self.seen: dict[int, float] = {}  # seq -> wall time first known
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
        through = 0
        while not self._stop.wait(0.002):
            try:
                row = conn.execute(
                    "SELECT through FROM site_peers WHERE gate = ?", (self.peer,)
                ).fetchone()
            except sqlite3.Error:
                continue
            top = int(row[0]) if row else 0
            now = time.time()
            for seq in range(through + 1, top + 1):
                self.seen.setdefault(seq, now)
            through = max(through, top)
        conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Busy:
    """Cards shown at ``gates`` at ``rate`` a second each, until stopped."""

    def __init__(self, site: Site, prefix: dict[str, str], rate: float):
        self.site, self.prefix, self.rate = site, prefix, rate
        self.shown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Busy:
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(1 / self.rate):
            for gate, prefix in self.prefix.items():
                self.site[gate].present([{"card": f"{prefix}{i % PEOPLE_EACH:07X}"}])
            i += 1
            self.shown += len(self.prefix)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def present(site: Site, gate: str, cards: list[str], gap: float) -> list[dict[str, Any]]:
    """Each card in turn at ``gate``, ``gap`` s after the last decision reached the broker;
    the decision events as the broker carried them."""
    topic = f"gated/{site.site}/{gate}/event"
    out = []
    for card in cards:
        time.sleep(gap)
        with site.watch.cond:
            before = len(site.watch.messages)
        site[gate].present([{"card": card}])

        def decided(m: list[tuple[str, bytes, bool]], before: int = before) -> bool:
            return any(t == topic and b'"decision"' in p for t, p, _ in m[before:])

        site.watch.wait_for(decided, timeout=20)
        with site.watch.cond:
            new = site.watch.messages[before:]
        out += [json.loads(p) for t, p, _ in new if t == topic and b'"decision"' in p]
    return [e for e in out if e.get("kind") == "decision"]


class StatusWatch:
    """``observer``'s ``T/status`` as the broker carries it, each with when it arrived."""

    def __init__(self, port: int, site: str, observer: str):
        self.arrived: list[tuple[float, dict[str, Any]]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{observer}")
        self.client.on_message = lambda c, u, m: self.arrived.append(
            (time.time(), json.loads(m.payload) if m.payload else {})
        )
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"gated/{site}/{observer}/status", qos=1)
        self.client.loop_start()

    def through(self, peer: str) -> dict[int, float]:
        """seq -> when the status first said it knew ``peer`` through it."""
        first: dict[int, float] = {}
        through = 0
        for when, status in list(self.arrived):
            view = (status.get("peers") or {}).get(peer) or {}
            top = int(view.get("through") or 0)
            for seq in range(through + 1, top + 1):
                first.setdefault(seq, when)
            through = max(through, top)
        return first

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def lags(grants: list[dict[str, Any]], seen: dict[int, float]) -> list[float]:
    """ms from each grant's commit to when it was seen; grants never seen are left out."""
    return [(seen[e["seq"]] - ts_seconds(e["ts"])) * 1000 for e in grants if e["seq"] in seen]


def describe(name: str, values: list[float], of: int) -> str:
    if not values:
        return f"{name:38} n/a (never seen: is [site] share built?)"
    return f"{name:38} {pct(values, 50):7.1f} / {pct(values, 99):7.1f} ms   ({len(values)}/{of})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presentations", type=int, default=150)
    parser.add_argument(
        "--gap", type=float, default=0.05, help="seconds between g's decision and its next card"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="cards a second at each busy gate")
    args = parser.parse_args()
    n = args.presentations
    if 3 * n > PEOPLE_EACH:
        raise SystemExit(f"bench: at most {PEOPLE_EACH // 3} presentations")
    tmp = tempfile.TemporaryDirectory(prefix="gated-bench-site-")
    work = Path(tmp.name)
    policy = {
        "require_temperature": False,
        "household_quota": {"max": 1, "window_h": 72, "direction": "in"},
    }
    prefixes = {"g": "A", "p1": "B", "p2": "C", "p3": "D", "x1": "E", "x2": "F", "x3": "9"}
    everybody = [row for prefix in prefixes.values() for row in people(prefix, PEOPLE_EACH)]
    broker = Mosquitto(work).start()
    s1 = s2 = None
    try:
        common: dict[str, Any] = {"policy": policy, "people": everybody, "broker": broker}
        s1 = Site(work / "s1", {"g": "in", "p1": "in", "p2": "in", "p3": "in"}, "s1", **common)
        s2 = Site(work / "s2", {"x1": "in", "x2": "in", "x3": "in"}, "s2", **common)
        s1.start()
        s2.start()
        status = StatusWatch(broker.port, "s1", "p1")
        tables = PeerTables(s1["p1"].db, "g")
        cards = [f"A{i:07X}" for i in range(3 * n + 1)]
        present(s1, "g", cards[:1], args.gap)  # warm up
        quiet = present(s1, "g", cards[1 : n + 1], args.gap)
        load = Busy(s2, {g: prefixes[g] for g in ("x1", "x2", "x3")}, args.rate).start()
        time.sleep(1)  # under way
        loaded = present(s1, "g", cards[n + 1 : 2 * n + 1], args.gap)
        load.stop()
        busy = Busy(s1, {g: prefixes[g] for g in ("p1", "p2", "p3")}, args.rate).start()
        time.sleep(1)
        peers = present(s1, "g", cards[2 * n + 1 :], args.gap)
        busy.stop()
        last = peers[-1]["seq"] if peers else 0
        deadline = time.monotonic() + 5  # the last grant's status: within a second of it
        while last not in status.through("g") and time.monotonic() < deadline:
            time.sleep(0.05)
        tables.close()
        status.close()
        seen_status = status.through("g")
        peer_rows = tables.seen
    finally:
        for s in (s1, s2):
            if s is not None:
                s.close()
        broker.kill()
        tmp.cleanup()

    def decide(events: list[dict[str, Any]]) -> list[float]:
        return [float(e["latency_ms"]["decide"]) for e in events]

    q, lo, pe = decide(quiet), decide(loaded), decide(peers)
    granted = [e for e in quiet + loaded + peers if e["decision"] == "granted"]
    print(f"presentations at g              {n} idle, {n} with s2 busy, {n} with its peers busy")
    print(
        f"busy gates                      3, {args.rate:g} cards/s each "
        f"({load.shown} shown at s2, {busy.shown} at g's peers)"
    )
    print(f"granted at g                    {len(granted)} of {3 * n}")
    print(f"decide p50/p99, idle            {pct(q, 50):.3f} / {pct(q, 99):.3f} ms")
    print(f"decide p50/p99, s2 busy         {pct(lo, 50):.3f} / {pct(lo, 99):.3f} ms")
    print(f"decide p50/p99, peers busy      {pct(pe, 50):.3f} / {pct(pe, 99):.3f} ms")
    print(f"decide p99 peers busy / idle    {pct(pe, 99) / pct(q, 99):.2f}")
    print(
        f"decide p99 peers / s2 busy      {pct(pe, 99) / pct(lo, 99):.2f}   (what learning costs)"
    )
    idle_grants = [e for e in granted if e in quiet]
    busy_grants = [e for e in granted if e in peers]
    print(
        describe(
            "commit at g -> p1 site_peers, idle", lags(idle_grants, peer_rows), len(idle_grants)
        )
    )
    print(
        describe(
            "commit at g -> p1 site_peers, busy", lags(busy_grants, peer_rows), len(busy_grants)
        )
    )
    print(
        describe("commit at g -> p1 status, idle", lags(idle_grants, seen_status), len(idle_grants))
    )
    print(
        describe("commit at g -> p1 status, busy", lags(busy_grants, seen_status), len(busy_grants))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
