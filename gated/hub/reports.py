"""The hub's reports over its stored events (docs/contracts.md §9).

``gated hub report daily``: per gate, the very object ``gated report daily --format json``
gives on that gate (:func:`gated.report.daily_report`, one implementation), plus what only
the hub knows (``missing``, ``online``, ``registry_version``); per site, the totals; the
**red list** (gates that checked at least ``black_below`` of their passages and whose every
event the hub holds, best first) and the **black list** (compliance below ``black_below``,
unattended periods, or events missing: ``why`` names each); the cards seen that the site's
registry does not hold; the cards first used that day at each site.

What differs from the gate, because the hub only knows what it stored:

- *First use.* A gate remembers every card's first use (``card_first_use``, kept past its
  retention). The hub has no such table: in a gate's object a card is "first used" when the
  hub holds no decision with it at that gate before the day's first event (by ``seq``, as the
  gate), and in ``first_used_cards`` when the hub holds no decision with it at any gate of
  the site stamped before the day. Events the hub never received, or purged after
  ``retention_days``, make a card look new again.
- *Masked uids.* Gates publish card uids as ``[mqtt] pii`` says (``masked`` by default:
  ``******3D4E``). Masked uids are compared with the registry's masked too, so a stranger's
  card ending like a registered one is not told apart (``match: "masked"``), and two cards of
  a gate ending alike count as one in its first uses. With ``pii = "none"`` the temperatures
  are dropped before they leave the gate, so that gate's compliance cannot be computed here.
- *Missing.* ``missing`` is what the hub lacks of the gate now (numbers between ``through``
  and ``highest``): a gap has no stamp, so it is not counted against a day.

- *Days.* They are counted in ``[report] timezone`` (each gate's object says so): a gate
  whose ``gate.timezone`` is another counts its own days otherwise.

``gated hub export`` and ``gated hub gates`` are here too; how they look is in
:mod:`gated.hub.report_format`, the cards in :mod:`gated.hub.cards`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from itertools import groupby
from typing import Any
from zoneinfo import ZoneInfo

from gated.cli.data import ledger_row, parse_since
from gated.errors import GatedError
from gated.hub.cards import first_used_cards, unregistered_cards
from gated.hub.config import HubConfig, load_hub_config
from gated.hub.report_format import (
    DAILY_CSV_COLUMNS,
    EXPORT_COLUMNS,
    daily_csv_rows,
    format_daily_text,
    format_gates_text,
    gate_table,
)
from gated.hub.store import HubStore, is_online
from gated.report import daily_report, day_bounds, day_cards, earlier_refs

#: How far before a day its passages' decisions are first looked for.
EARLIER_WINDOW = timedelta(days=1)


def _gate_reports(
    store: HubStore,
    site: str,
    gates: Iterable[str],
    day: date,
    tz: ZoneInfo,
    *,
    uses: list[tuple[str, str, int, str]] | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The gate reports of one site's day, and the day's events by gate."""
    start, end = day_bounds(day, tz)
    after = day_bounds(day - EARLIER_WINDOW, tz)[0]
    by_gate: dict[str, list[dict[str, Any]]] = {
        g: list(evs)
        for g, evs in groupby(
            store.events(site=site, since=start, until=end), key=lambda e: str(e.get("gate"))
        )
    }
    first_seq: dict[tuple[str, str], int] = {}
    for g, card, seq, _ in uses or ():
        first_seq[(g, card)] = seq
    out = {}
    for gate in gates:
        events = by_gate.get(gate, [])
        day_first = min((int(e["seq"]) for e in events if isinstance(e.get("seq"), int)), default=0)
        seen = {c for c in day_cards(events) if first_seq.get((gate, c), day_first) < day_first}
        earlier = store.decisions_by_id(site, gate, earlier_refs(events), after=after)
        out[gate] = daily_report(
            events,
            day=day,
            tz=tz,
            site=site,
            gate=gate,
            cards_seen_before=seen,
            earlier_decisions=earlier,
        )
        if uses is None:  # not asked for: not every card of the day taken for new
            out[gate]["first_used_cards"] = []
    return out, by_gate


def _minutes(period: Mapping[str, Any]) -> float:
    """An unattended period's length: from its first alarm to the guard who came (or the last)."""
    end = period.get("ended_by", {}) or {}
    a, b = str(period.get("start")), str(end.get("time") or period.get("end"))
    try:
        t0 = datetime.strptime(a, "%H:%M:%S")
        t1 = datetime.strptime(b, "%H:%M:%S")
    except ValueError:
        return 0.0
    return max(0.0, (t1 - t0).total_seconds() / 60)


def daily(
    store: HubStore,
    config: HubConfig,
    day: date,
    site: str | None = None,
    *,
    now: float | None = None,
    cards: bool = True,
) -> dict[str, Any]:
    """The hub's report of ``day`` (in ``[report] timezone``), every gate or one site's.

    ``cards=False`` leaves out the cards first used (``first_used_cards`` empty, and each
    gate's too; they read the site's ``hub_card_uses``): for a page that only shows figures.
    """
    tz = config.tz
    now = time.time() if now is None else now
    start, _ = day_bounds(day, tz)
    rows = [r for r in store.gate_rows() if site is None or r["site"] == site]
    black_below = config.hub.black_below
    gates: list[dict[str, Any]] = []
    sites: dict[str, dict[str, Any]] = {}
    unregistered: list[dict[str, Any]] = []
    first_used: list[dict[str, Any]] = []
    for s, site_rows_it in groupby(rows, key=lambda r: str(r["site"])):
        site_rows = list(site_rows_it)
        uses = store.card_uses(s) if cards else None
        reports, by_gate = _gate_reports(
            store, s, [str(r["gate"]) for r in site_rows], day, tz, uses=uses
        )
        registry = store.latest_registry(s)
        totals: dict[str, Any] = {
            "gates": len(site_rows),
            "passages": 0,
            "checked": 0,
            "share": None,
            "decisions": {},
            "fever_alarms": 0,
            "tailgates": 0,
            "unattended_periods": 0,
            "unattended_minutes": 0.0,
            "missing": 0,
            "registry_version": None if registry is None else registry[0],
        }
        for row in site_rows:
            r = reports[str(row["gate"])]
            r["missing"] = int(row["missing"])
            r["online"] = is_online(row, now, config.hub.offline_after_s)
            r["registry_version"] = row["registry_version"]
            gates.append(r)
            totals["passages"] += r["compliance"]["passages"]
            totals["checked"] += r["compliance"]["checked"]
            for k, v in r["decisions"].items():
                totals["decisions"][k] = totals["decisions"].get(k, 0) + v
            totals["fever_alarms"] += len(r["fever_alarms"])
            totals["tailgates"] += r["passages"]["tailgates"]
            totals["unattended_periods"] += len(r["unattended_periods"])
            totals["unattended_minutes"] += sum(_minutes(p) for p in r["unattended_periods"])
            totals["missing"] += r["missing"]
        if totals["passages"]:
            totals["share"] = round(totals["checked"] / totals["passages"], 4)
        totals["unattended_minutes"] = round(totals["unattended_minutes"], 1)
        totals["decisions"] = dict(sorted(totals["decisions"].items()))
        sites[s] = totals
        unregistered += unregistered_cards(s, by_gate, registry)
        if uses is not None:
            first_used += first_used_cards(s, by_gate, uses, start, tz)
    red, black = red_and_black(gates, black_below)
    return {
        "report": "hub_daily",
        "date": day.isoformat(),
        "timezone": config.report.timezone,
        "black_below": black_below,
        "gates": gates,
        "sites": sites,
        "red": red,
        "black": black,
        "unregistered_cards": unregistered,
        "first_used_cards": first_used,
    }


def red_and_black(
    gates: Iterable[Mapping[str, Any]], black_below: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The red list (best first) and the black list (worst first) of gate reports."""
    red, black = [], []
    for r in gates:
        share = r["compliance"]["share"]
        why = []
        if share is not None and share < black_below:
            why.append("compliance")
        if r["unattended_periods"]:
            why.append("unattended")
        if r.get("missing"):
            why.append("missing")
        entry = {"site": r["site"], "gate": r["gate"], "share": share}
        if why:
            black.append(
                {
                    **entry,
                    "why": why,
                    "passages": r["compliance"]["passages"],
                    "unattended_periods": len(r["unattended_periods"]),
                    "missing": int(r.get("missing") or 0),
                }
            )
        elif share is not None:
            red.append({**entry, "passages": r["compliance"]["passages"]})
    red.sort(key=lambda e: (-e["share"], -e["passages"], e["site"], e["gate"]))
    black.sort(
        key=lambda e: (
            e["share"] is None,
            e["share"] or 0.0,
            -e["missing"],
            -e["unattended_periods"],
            e["site"],
            e["gate"],
        )
    )
    return red, black


#: Shares of past days already computed, by (database, site, gates, day, zone) and the
#: count of events they were computed from: the newest first out of :data:`HISTORY_KEPT`.
_history: OrderedDict[tuple[Any, ...], tuple[int, dict[str, float | None]]] = OrderedDict()
_history_lock = threading.Lock()
HISTORY_KEPT = 20_000


def _day_shares(
    store: HubStore, site: str, gates: list[str], day: date, tz: ZoneInfo
) -> dict[str, float | None]:
    """Each gate's compliance share of ``day``, computed again only when its events changed.

    Stored events are only ever added (or purged): the count of the site's events of the day
    and the day before (whose decisions its passages may refer to) tells whether they did.
    """
    end = day_bounds(day, tz)[1]
    count = store.count_events(site, day_bounds(day - EARLIER_WINDOW, tz)[0], end)
    where = f"memory:{id(store.conn)}" if str(store.path) == ":memory:" else store.path.resolve()
    key = (str(where), site, tuple(gates), day, tz.key)
    with _history_lock:
        kept = _history.get(key)
        if kept is not None and kept[0] == count:
            _history.move_to_end(key)
            return kept[1]
    reports, _ = _gate_reports(store, site, gates, day, tz, uses=None)
    shares = {g: reports[g]["compliance"]["share"] for g in gates}
    with _history_lock:
        _history[key] = (count, shares)
        _history.move_to_end(key)
        while len(_history) > HISTORY_KEPT:
            _history.popitem(last=False)
    return shares


def compliance_history(
    store: HubStore, config: HubConfig, end: date, days: int = 14
) -> dict[str, Any]:
    """Per gate, its compliance share on each of the ``days`` days to ``end`` (None: no passage).

    A day whose events have not changed since it was last computed is not computed again.
    """
    tz = config.tz
    span = [end - timedelta(days=days - 1 - i) for i in range(days)]
    rows = store.gate_rows()
    out: dict[str, list[float | None]] = {f"{r['site']}/{r['gate']}": [] for r in rows}
    for s, site_rows in groupby(rows, key=lambda r: str(r["site"])):
        names = [str(r["gate"]) for r in site_rows]
        for day in span:
            shares = _day_shares(store, s, names, day, tz)
            for g in names:
                out[f"{s}/{g}"].append(shares[g])
    return {"days": [d.isoformat() for d in span], "gates": out}


# -- the command line ------------------------------------------------------------------


def open_store(config: HubConfig) -> HubStore:
    """The hub's store for a command that reads it; GatedError when there is none yet."""
    path = config.database_path
    if not path.is_file():
        raise GatedError(f"no hub database at {path} (hub.database): has `gated hub run` run yet?")
    return HubStore(path)


def cmd_gates(args: argparse.Namespace) -> int:
    """``gated hub gates``: one row per gate the hub has heard of."""
    config = load_hub_config(args.config)
    store = open_store(config)
    try:
        rows = gate_table(store, config, time.time())
    finally:
        store.close()
    if args.format == "json":
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_gates_text(rows))
    return 0


def cmd_report_daily(args: argparse.Namespace) -> int:
    """``gated hub report daily``: one day (default today in ``[report] timezone``)."""
    config = load_hub_config(args.config)
    day = args.date or datetime.now(config.tz).date()
    store = open_store(config)
    try:
        report = daily(store, config, day, site=args.site)
    finally:
        store.close()
    if args.format == "json":
        json.dump(report, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(DAILY_CSV_COLUMNS)
        writer.writerows(daily_csv_rows(report))
    else:
        sys.stdout.write(format_daily_text(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``gated hub export``: the stored events by (site, gate, seq), streamed."""
    try:
        since = parse_since(args.since) if args.since else None
    except GatedError as exc:
        print(f"gated: {exc}", file=sys.stderr)  # bad usage: exit 2, one line
        return 2
    config = load_hub_config(args.config)
    store = open_store(config)
    out = sys.stdout
    try:
        events = store.events(site=args.site, gate=args.gate, since=since)
        if args.format == "jsonl":
            for e in events:
                out.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(EXPORT_COLUMNS)
            for e in events:
                writer.writerow([e.get("site"), e.get("gate"), *ledger_row(e)])
        out.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        store.close()
    return 0
