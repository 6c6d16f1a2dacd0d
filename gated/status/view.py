"""What the screen is shown: events with personal data masked, today's counts, open alarms.

Names and ID numbers are masked and card uids cut to their last four characters
before anything leaves the daemon for a browser (docs/contracts.md §7); temperatures stay, the
guard needs them. An alarm stays open until an ``ack`` event refers to it; the open
alarms are rebuilt from the ledger at start, so a restart does not silence them.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gated.clock import iso_utc, parse_iso_utc
from gated.privacy import reduce_event

RECENT = 50
#: Open alarms kept at most (the oldest goes first) and how far back a start looks for them.
MAX_ALARMS = 200
ALARM_WINDOW = timedelta(days=1)

#: Fields (of gated.events) of an event the screen uses; everything else stays in the ledger.
_SHOWN = (
    "id",
    "seq",
    "ts",
    "kind",
    "direction",
    "decision",
    "reasons",
    "person",
    "credential",
    "temperature_c",
    "ref",
    "guard",
    "passed",
    "alarm",
    "detail",
    "mode",
    "previous",
    "by",
    "device",
    "ok",
    "confirm_temp_c",
    "boot",
    "events",
    "what",
)
#: ... and of its ``person`` (a field of :class:`gated.events.Person`).
_SHOWN_PERSON = ("id", "name", "unit", "household", "category", "id_number")


def screen_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as a browser may see it: masked, and only what the screen shows."""
    masked = reduce_event(event, "masked")
    out = {k: masked[k] for k in _SHOWN if k in masked}
    person = out.get("person")
    if isinstance(person, dict):
        out["person"] = {k: person.get(k) for k in _SHOWN_PERSON}
    return out


def local_day(ts: str, tz: ZoneInfo) -> str:
    """The gate-local date (``YYYY-MM-DD``) of an ISO UTC stamp."""
    try:
        when = parse_iso_utc(ts)
    except (ValueError, AttributeError):
        return ""
    return when.astimezone(tz).date().isoformat()


@dataclass
class Today:
    """Counts of one gate-local day: in, out, denied, fever, overrides."""

    day: str = ""
    counts: dict[str, int] = field(
        default_factory=lambda: {"in": 0, "out": 0, "denied": 0, "fever": 0, "overrides": 0}
    )
    #: ids of the day's denials: a guard who confirms one (a fever) denies nobody new.
    denials: set[str] = field(default_factory=set)

    def add(self, event: dict[str, Any], day: str) -> None:
        """Count ``event`` if it belongs to ``day``; a new day starts from zero."""
        if day != self.day:
            if day < self.day:
                return
            self.day = day
            self.counts = dict.fromkeys(self.counts, 0)
            self.denials = set()
        kind = event.get("kind")
        if kind == "passage" and event.get("passed"):
            direction = event.get("direction")
            if direction in ("in", "out"):
                self.counts[direction] += 1
        elif kind == "decision":
            decision = event.get("decision")
            if decision == "denied":
                self.denials.add(str(event.get("id")))
            if decision == "denied" or (
                decision == "guard_denied" and event.get("ref") not in self.denials
            ):
                self.counts["denied"] += 1
            if event.get("guard"):
                self.counts["overrides"] += 1
        elif kind == "alarm" and event.get("alarm") == "fever":
            self.counts["fever"] += 1


class ScreenHistory:
    """The screen's memory: the last events, today's counts and the open alarms."""

    def __init__(self, tz: ZoneInfo, boot: int):
        self.tz = tz
        self.boot = boot
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.today = Today()
        self.alarms: dict[str, dict[str, Any]] = {}
        self.last_seq = 0

    def load(self, conn: sqlite3.Connection, now: datetime) -> None:
        """Fill from the ledger: today's events counted, the last ``RECENT`` kept, and the
        alarms of the last day that no ``ack`` closed."""
        today = now.astimezone(self.tz).date().isoformat()
        self.today = Today(today)
        start = datetime.fromisoformat(today).replace(tzinfo=self.tz)
        since = iso_utc(start.timestamp())
        for (body,) in conn.execute("SELECT body FROM events WHERE ts >= ? ORDER BY seq", (since,)):
            self._count(json.loads(body))
        rows = conn.execute(
            "SELECT body FROM events ORDER BY seq DESC LIMIT ?", (RECENT,)
        ).fetchall()
        for (body,) in reversed(rows):
            self._keep(json.loads(body))
        since = iso_utc((now - ALARM_WINDOW).timestamp())
        for (body,) in conn.execute(
            "SELECT body FROM events WHERE ts >= ? AND kind IN ('alarm', 'ack') ORDER BY seq",
            (since,),
        ):
            self._track(json.loads(body))

    def _count(self, event: dict[str, Any]) -> None:
        self.today.add(event, local_day(str(event.get("ts", "")), self.tz))

    def _keep(self, event: dict[str, Any]) -> dict[str, Any]:
        shown = screen_event(event)
        self.recent.append(shown)
        self.last_seq = max(self.last_seq, int(event.get("seq") or 0))
        return shown

    def _track(self, event: dict[str, Any]) -> None:
        """An alarm opens; an ``ack`` closes the alarm it refers to."""
        kind = event.get("kind")
        if kind == "alarm":
            while len(self.alarms) >= MAX_ALARMS:
                del self.alarms[next(iter(self.alarms))]
            self.alarms[str(event["id"])] = screen_event(event)
        elif kind == "ack":
            self.alarms.pop(str(event.get("ref")), None)

    def add(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Take one new event; returns it as the screen shows it (None: already had it)."""
        if int(event.get("seq") or 0) <= self.last_seq:
            return None
        self._count(event)
        self._track(event)
        return self._keep(event)

    def counts(self, now: datetime) -> dict[str, int]:
        """Today's counts; zeros once the gate-local day has turned and nothing happened yet."""
        if now.astimezone(self.tz).date().isoformat() != self.today.day:
            return dict.fromkeys(self.today.counts, 0)
        return dict(self.today.counts)
