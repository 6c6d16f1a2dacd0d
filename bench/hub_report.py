"""Bench: the hub's daily report, 14-day compliance and export over a filled store.

Fills a hub store (SQLite, ``synchronous=FULL``, in a temporary directory) with
``--gates`` gates (10 to a site) x ``--days`` days x ``--sessions`` card sessions a day
(a decision and its passage each, as gates publish them with ``pii = "masked"``; residents'
cards from a pool per site), then times:

- ``daily`` of the last day with first-used cards (reads each site's whole card history),
- ``daily(cards=False)`` (the figures and the two lists only, what a page refreshes),
- ``compliance_history`` of 14 days (the fleet page's chart), computed, then again with
  every day unchanged (each day's shares are kept while its events are the same),
- ``export`` of every event as JSON Lines (events per second).

    .venv/bin/python bench/hub_report.py [--gates 40] [--days 30] [--sessions 150]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

from gated.clock import iso_utc
from gated.hub.config import HubConfig
from gated.hub.reports import compliance_history, daily
from gated.hub.store import EventRow, HubStore

TZ = "Asia/Shanghai"
GATES_PER_SITE = 10
CARDS_PER_SITE = 2000


def body(kind: str, site: str, gate: str, seq: int, ts: str, **fields: object) -> EventRow:
    eid = str(uuid.uuid4())
    event = {"kind": kind, **fields, "id": eid, "ts": ts, "site": site, "gate": gate}
    event.update({"clock_synced": True, "boot": 1, "seq": seq})
    text = json.dumps(event, separators=(",", ":"))
    return EventRow(site, gate, seq, eid, kind, ts, 1, True, time.time(), text)


def fill(store: HubStore, gates: int, days: int, sessions: int, first: date) -> int:
    n = 0
    for g in range(gates):
        site, gate = f"s{g // GATES_PER_SITE + 1}", f"g{g % GATES_PER_SITE + 1}"
        seq = 0
        rows: list[EventRow] = []
        for d in range(days):
            start = datetime(first.year, first.month, first.day).timestamp() + d * 86400
            for i in range(sessions):
                t = start + 3600 + i * (20 * 3600 / sessions)
                card = f"******{(g * 7 + d * 13 + i) % CARDS_PER_SITE:04d}"
                seq += 1
                decision = body(
                    "decision",
                    site,
                    gate,
                    seq,
                    iso_utc(t),
                    decision="granted",
                    reasons=[],
                    direction="in",
                    credential={"kind": "card", "ref": card, "color": "green"},
                    person={"id": f"P{card[-4:]}", "name": "Z**", "household": "H1"},
                    temperature_c=36.5,
                )
                seq += 1
                passage = body(
                    "passage", site, gate, seq, iso_utc(t + 2), ref=decision.id, passed=True
                )
                rows += [decision, passage]
                # Every fifth gate lets one in unchecked a few times a day.
                if g % 5 == 0 and i % 10 == 0:
                    seq += 1
                    rows.append(
                        body("passage", site, gate, seq, iso_utc(t + 9), ref=None, passed=True)
                    )
            if len(rows) >= 5000:
                store.begin()
                store.add_events(rows)
                store.commit()
                n += len(rows)
                rows = []
        store.begin()
        store.add_events(rows)
        store.commit()
        n += len(rows)
    return n


def timed(what: str, fn: object, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    print(f"{what:<44}{best * 1000:10.1f} ms")
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gates", type=int, default=40)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--sessions", type=int, default=150, help="card sessions per gate and day")
    a = ap.parse_args()
    first = date(2026, 1, 1)
    last = first + timedelta(days=a.days - 1)
    with tempfile.TemporaryDirectory() as tmp:
        config = HubConfig.model_validate({"hub": {"id": "bench"}, "report": {"timezone": TZ}})
        store = HubStore(Path(tmp) / "hub.db")
        t0 = time.perf_counter()
        n = fill(store, a.gates, a.days, a.sessions, first)
        took = time.perf_counter() - t0
        print(f"stored {n} events of {a.gates} gates over {a.days} days in {took:.1f} s")
        day = timed("daily (with first-used cards)", lambda: daily(store, config, last))
        fig = timed("daily (cards=False)", lambda: daily(store, config, last, cards=False))
        hist = timed(
            "compliance_history (14 days)", lambda: compliance_history(store, config, last), 1
        )
        again = timed(
            "compliance_history again (days unchanged)",
            lambda: compliance_history(store, config, last),
        )
        print(f"history: computed once {hist / again:.0f}x the time of one kept")

        def export() -> None:
            out = io.StringIO()
            for e in store.events():
                out.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n")

        ex = timed("export jsonl (all events)", export, 1)
        print(f"export: {n / ex:,.0f} events/s")
        print(
            f"daily per gate: {day / a.gates * 1000:.2f} ms with cards, "
            f"{fig / a.gates * 1000:.2f} ms without; ratio {day / fig:.1f}"
        )
        r = daily(store, config, last)
        print(f"red {len(r['red'])}, black {len(r['black'])} of {len(r['gates'])} gates")
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
