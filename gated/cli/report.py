"""``gated report daily -c FILE [--date D] [--format text|json]``."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gated.errors import GatedError
from gated.ledger import ensure_card_first_use
from gated.report import daily_report, day_bounds, day_cards, earlier_refs, format_text
from gated.storage import connect

if TYPE_CHECKING:
    from gated.config import Config


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date YYYY-MM-DD") from None


def day_events(conn: sqlite3.Connection, start: str, end: str) -> list[dict[str, Any]]:
    """The events stamped in ``[start, end)``, in ``seq`` order."""
    rows = conn.execute(
        "SELECT body FROM events WHERE ts >= ? AND ts < ? ORDER BY seq", (start, end)
    )
    return [json.loads(body) for (body,) in rows]


def cards_seen_before(conn: sqlite3.Connection, cards: set[str], first_seq: int) -> set[str]:
    """Those of ``cards`` first used before the event ``first_seq``.

    From ``card_first_use``, which retention keeps for registered cards: a card used
    months ago is not new today because the events of its first use are gone. By
    ``seq``, not by stamp, so an event stamped by an unsynchronised clock cannot
    reorder them.
    """
    out: set[str] = set()
    todo = sorted(cards)
    for i in range(0, len(todo), 500):
        chunk = todo[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT uid FROM card_first_use WHERE seq < ? AND uid IN ({marks})",
            [first_seq, *chunk],
        )
        out.update(str(uid) for (uid,) in rows)
    return out


def decisions_by_id(conn: sqlite3.Connection, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Decision events by id (those a passage refers to from the day before)."""
    out: dict[str, dict[str, Any]] = {}
    todo = sorted(ids)
    for i in range(0, len(todo), 500):
        chunk = todo[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for (body,) in conn.execute(
            f"SELECT body FROM events WHERE kind = 'decision' AND id IN ({marks})", chunk
        ):
            event = json.loads(body)
            out[event["id"]] = event
    return out


def build_report(config: Config, conn: sqlite3.Connection, day: date) -> dict[str, Any]:
    """Read what the report needs from the ledger and compute it."""
    tz = ZoneInfo(config.gate.timezone)
    start, end = day_bounds(day, tz)
    events = day_events(conn, start, end)
    # Passages and guard answers whose decision was taken before the day.
    missing = earlier_refs(events)
    cards = day_cards(events)
    ensure_card_first_use(conn)  # a database the daemon has not opened since the upgrade
    first_seq = min((int(e["seq"]) for e in events), default=0)
    return daily_report(
        events,
        day=day,
        tz=tz,
        site=config.gate.site,
        gate=config.gate.id,
        cards_seen_before=cards_seen_before(conn, cards, first_seq),
        earlier_decisions=decisions_by_id(conn, missing),
    )


def cmd_report_daily(args: argparse.Namespace) -> int:
    """Print the daily report of one day (default: today in the gate's time zone)."""
    from gated.config import load_config

    config = load_config(args.config)
    path = Path(config.storage.path)
    if not path.exists():
        raise GatedError(f"no database at {path} (storage.path): has the gate run yet?")
    day = args.date or datetime.now(ZoneInfo(config.gate.timezone)).date()
    conn = connect(path)
    try:
        report = build_report(config, conn, day)
    finally:
        conn.close()
    if args.format == "json":
        json.dump(report, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_text(report))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report daily`` to the ``gated`` sub-commands."""
    p = sub.add_parser("report", help="reports over the ledger")
    rsub = p.add_subparsers(dest="report", metavar="REPORT")
    rsub.required = True
    d = rsub.add_parser(
        "daily",
        help="one day: decisions, reasons, fever, overrides, unattended periods, cards",
    )
    d.add_argument("-c", "--config", required=True, help="config file (TOML)")
    d.add_argument(
        "--date", type=_date, help="the day, YYYY-MM-DD in the gate's time zone (default today)"
    )
    d.add_argument("--format", choices=("text", "json"), default="text")
    d.set_defaults(func=cmd_report_daily)
