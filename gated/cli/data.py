"""``gated registry import|export`` and ``gated ledger export``."""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gated.clock import iso_utc, parse_iso_utc
from gated.errors import GatedError
from gated.ledger import iter_events
from gated.registry import Registry, read_csv
from gated.storage import connect

#: The CSV columns of ``gated ledger export``, each with the body field it is read from
#: (``person.id``: the ``id`` of the event's ``person``), a field of :mod:`gated.events`.
CSV_FIELDS = (
    ("seq", "seq"),
    ("id", "id"),
    ("ts", "ts"),
    ("kind", "kind"),
    ("direction", "direction"),
    ("decision", "decision"),
    ("reasons", "reasons"),
    ("person_id", "person.id"),
    ("household", "person.household"),
    ("credential_kind", "credential.kind"),
    ("credential_ref", "credential.ref"),
    ("color", "credential.color"),
    ("temperature_c", "temperature_c"),
    ("ref", "ref"),
    ("guard", "guard"),
    ("alarm", "alarm"),
    ("detail", "detail"),
    ("passed", "passed"),
    ("what", "what"),
    ("by", "by"),
    ("clock_synced", "clock_synced"),
    ("boot", "boot"),
)
LEDGER_COLUMNS = tuple(column for column, _ in CSV_FIELDS)


def _open(config_path: str) -> tuple[Any, sqlite3.Connection]:
    from gated.config import load_config

    config = load_config(config_path)
    return config, connect(config.storage.path)


def cmd_registry_import(args: argparse.Namespace) -> int:
    """Import a registry CSV: all rows or none."""
    _, conn = _open(args.config)
    try:
        path = Path(args.file)
        persons, cards = read_csv(path)
        Registry(conn).apply(persons, cards, iso_utc(time.time()))
        print(f"imported {len(persons)} persons, {len(cards)} cards from {path}")
    finally:
        conn.close()
    return 0


def cmd_registry_export(args: argparse.Namespace) -> int:
    """Export the registry as CSV."""
    _, conn = _open(args.config)
    try:
        if args.out:
            with open(args.out, "w", encoding="utf-8", newline="") as out:
                Registry(conn).export_csv(out)
        else:
            Registry(conn).export_csv(sys.stdout)
    finally:
        conn.close()
    return 0


def parse_since(text: str) -> str:
    """An ISO date or date-time (naive means UTC) as the ledger's ``ts`` format."""
    try:
        dt = parse_iso_utc(text)
    except ValueError:
        raise GatedError(f"--since: not an ISO 8601 date or time: {text!r}") from None
    return iso_utc(dt.timestamp())


def _cell(e: Mapping[str, Any], path: str) -> Any:
    value: Any = e
    for name in path.split("."):
        value = value.get(name) if isinstance(value, Mapping) else None
    return value


def ledger_row(e: dict[str, Any]) -> list[Any]:
    """An event as the CSV row of ``gated ledger export`` (:data:`LEDGER_COLUMNS`)."""
    # A stored row as it is: the export never refuses an event of an older version.
    row = [_cell(e, path) for _, path in CSV_FIELDS]
    reasons = LEDGER_COLUMNS.index("reasons")
    row[reasons] = " ".join(row[reasons] or [])
    return row


def cmd_ledger_export(args: argparse.Namespace) -> int:
    """Export the ledger in ``seq`` order as CSV or JSON Lines."""
    try:
        since = parse_since(args.since) if args.since else None
    except GatedError as exc:
        # Bad usage, not a runtime failure: exit 2 (docs/contracts.md §2), still one line.
        print(f"gated: {exc}", file=sys.stderr)
        return 2
    _, conn = _open(args.config)
    try:
        out = sys.stdout
        if args.format == "jsonl":
            for e in iter_events(conn, since):
                out.write(json.dumps(e, ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(LEDGER_COLUMNS)
            for e in iter_events(conn, since):
                writer.writerow(ledger_row(e))
    finally:
        conn.close()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``registry`` and ``ledger`` to the command line."""
    reg = sub.add_parser("registry", help="residents, households and cards")
    rsub = reg.add_subparsers(dest="registry_command", metavar="ACTION")
    rsub.required = True
    p = rsub.add_parser("import", help="import a registry CSV (all rows or none)")
    p.add_argument("file")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_registry_import)
    p = rsub.add_parser("export", help="export the registry as CSV")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--out", help="file to write (default: stdout)")
    p.set_defaults(func=cmd_registry_export)

    led = sub.add_parser("ledger", help="the in/out ledger")
    lsub = led.add_subparsers(dest="ledger_command", metavar="ACTION")
    lsub.required = True
    p = lsub.add_parser("export", help="export events in seq order")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--since", help="only events stamped at or after this ISO date/time")
    p.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    p.set_defaults(func=cmd_ledger_export)
