"""Retention: ledger rows older than ``storage.retention_days`` are purged once a day.

What is purged, and what never is:

- ``events`` older than the cutoff (now - ``retention_days``), except an event still
  in the outbox: an undelivered event is kept until the publisher has delivered it,
  but at most ``undelivered_max_days``; then it goes with its outbox row, the purge
  event counts it (``undelivered_purged``) and a ``device`` alarm says how many the
  broker never had. (With no broker configured there are no outbox rows at all: the
  ledger writes none, and the start drops those of an earlier configuration.)
  Each cutoff is found through the last event stamped with a *synchronised* clock
  before it; everything with a lower ``seq`` happened earlier, whatever its own
  (perhaps 1970) timestamp says. With an unsynchronised clock nothing is purged.
- ``quota_use`` rows older than both the quota window and ``retention_days``.
- ``pass_uses`` (one-time passes already used) older than a year or
  ``retention_days``, whichever is longer: a replayed pass must still be caught.
- ``site_quota_use`` and ``site_pass_uses`` (what the site's peer gates taught, SPEC
  §4b) by the same rules as ``quota_use`` and ``pass_uses``.
- ``presence`` (and ``site_presence``), the registry and revoked passes are state, not
  history: never purged.
  Nor is ``card_first_use`` (a card uid and its first decision's stamp and ``seq``)
  for a card in the registry, so the daily report still knows a card's first use once
  its events are gone; the first use of a uid the registry does not hold (a stranger's
  card) goes with the events, so no uid outlives ``retention_days`` unregistered.

Each purge that removed anything is itself a ledger event, ``kind: "purge"``. The
work is split into short steps that run on the controller thread (the only writer),
so readings are decided between two batches; freed pages are returned to the file
system with ``PRAGMA incremental_vacuum`` in small chunks (databases created with
``auto_vacuum=INCREMENTAL``; an older file reuses its free pages instead).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from gated.clock import Clock, iso_utc
from gated.events import Alarm, Event, Purge
from gated.storage import Transaction

if TYPE_CHECKING:
    from gated.controller import Controller

log = logging.getLogger(__name__)

DAY_S = 86_400.0
PASS_USE_KEEP_DAYS = 366
"""One-time pass uses are kept at least this long (a pass may be valid for months)."""
UNDELIVERED_MAX_DAYS = 90
"""Days an event the broker never had is kept at most (``storage.undelivered_max_days``)."""

T = TypeVar("T")


@dataclass
class PurgePlan:
    """One purge: events up to ``upto_seq`` (stamped before ``cutoff``) go, undelivered
    ones only up to ``undelivered_upto_seq`` (stamped before ``undelivered_cutoff``)."""

    now: float
    cutoff: str
    upto_seq: int
    undelivered_cutoff: str = ""
    undelivered_upto_seq: int = 0
    events: int = 0
    undelivered_purged: int = 0
    quota_use: int = 0
    pass_uses: int = 0
    card_first_use: int = 0
    kept_undelivered: int = 0
    pages_freed: int = 0
    site_quota_use: int = 0
    site_pass_uses: int = 0

    def event(self, retention_days: int) -> Purge:
        """The ``purge`` ledger event that records this purge."""
        purge = Purge(
            before=self.cutoff,
            upto_seq=self.upto_seq,
            retention_days=retention_days,
            events=self.events,
            quota_use=self.quota_use,
            pass_uses=self.pass_uses,
            card_first_use=self.card_first_use,
            kept_undelivered=self.kept_undelivered,
            undelivered_before=self.undelivered_cutoff,
            undelivered_purged=self.undelivered_purged,
        )
        if not (self.site_quota_use or self.site_pass_uses):
            return purge  # a body as before the site tables, when they lost nothing
        site = {"site_quota_use": self.site_quota_use, "site_pass_uses": self.site_pass_uses}
        return purge.model_copy(update=site)


class Retention:
    """The purge, in steps; each method runs on the controller thread."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        clock: Clock,
        retention_days: int,
        quota_window_h: float | None = None,
        clock_synced: Callable[[], bool] = lambda: True,
        batch_rows: int = 500,
        vacuum_pages: int = 256,
        undelivered_max_days: int = UNDELIVERED_MAX_DAYS,
    ):
        self.conn = conn
        self.clock = clock
        self.retention_days = retention_days
        # Never below retention_days (the config refuses it): a delivered event must
        # not outlive an undelivered one.
        self.undelivered_max_days = max(undelivered_max_days, retention_days)
        self.quota_window_h = quota_window_h
        self.clock_synced = clock_synced
        self.batch_rows = batch_rows
        self.vacuum_pages = vacuum_pages
        self._unsynced_said = False

    def plan(self) -> PurgePlan | None:
        """What to purge now; None when the clock cannot be trusted."""
        if not self.clock_synced():
            # Said once: an offline gate would otherwise repeat it at every retry.
            (log.debug if self._unsynced_said else log.warning)(
                "ledger purge skipped: the system clock is not synchronised"
            )
            self._unsynced_said = True
            return None
        self._unsynced_said = False
        now = self.clock.time()
        cutoff = iso_utc(now - self.retention_days * DAY_S)
        undelivered_cutoff = iso_utc(now - self.undelivered_max_days * DAY_S)
        return PurgePlan(
            now=now,
            cutoff=cutoff,
            upto_seq=self._last_seq_before(cutoff),
            undelivered_cutoff=undelivered_cutoff,
            undelivered_upto_seq=self._last_seq_before(undelivered_cutoff),
        )

    def _last_seq_before(self, cutoff: str) -> int:
        row = self.conn.execute(
            "SELECT MAX(seq) FROM events WHERE ts < ?"
            " AND json_extract(body, '$.clock_synced') IS NOT 0",
            (cutoff,),
        ).fetchone()
        return int(row[0] or 0)

    def delete_batch(self, plan: PurgePlan) -> int:
        """Delete up to ``batch_rows`` purgeable events; the number deleted.

        An event up to ``undelivered_upto_seq`` goes whether delivered or not, its
        outbox row with it (in the same transaction, so no row points at nothing).
        """
        if plan.upto_seq <= 0:
            return 0
        with Transaction(self.conn) as c:
            rows = c.execute(
                "SELECT e.seq FROM events e WHERE e.seq <= ?"
                " AND (e.seq <= ? OR NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = e.seq))"
                " ORDER BY e.seq LIMIT ?",
                (plan.upto_seq, plan.undelivered_upto_seq, self.batch_rows),
            ).fetchall()
            if not rows:
                return 0
            last = int(rows[-1][0])
            # Every event up to ``last`` that qualifies is in ``rows`` (seq order), so
            # the outbox rows to drop are those up to both bounds.
            plan.undelivered_purged += c.execute(
                "DELETE FROM outbox WHERE seq <= ?", (min(last, plan.undelivered_upto_seq),)
            ).rowcount
            n = c.execute(
                "DELETE FROM events WHERE seq <= ?"
                " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = events.seq)",
                (last,),
            ).rowcount
        plan.events += n
        return int(n)

    def delete_state(self, plan: PurgePlan) -> None:
        """Old ``quota_use`` and ``pass_uses`` rows; count what stays undelivered."""
        quota_keep_s = max(self.retention_days * DAY_S, (self.quota_window_h or 0) * 3600)
        pass_keep_s = max(self.retention_days, PASS_USE_KEEP_DAYS) * DAY_S
        with Transaction(self.conn) as c:
            plan.quota_use += c.execute(
                "DELETE FROM quota_use WHERE ts < ?", (plan.now - quota_keep_s,)
            ).rowcount
            plan.pass_uses += c.execute(
                "DELETE FROM pass_uses WHERE ts < ?", (plan.now - pass_keep_s,)
            ).rowcount
            # What the peers taught goes by the same rules as the gate's own.
            plan.site_quota_use += c.execute(
                "DELETE FROM site_quota_use WHERE ts < ?", (plan.now - quota_keep_s,)
            ).rowcount
            plan.site_pass_uses += c.execute(
                "DELETE FROM site_pass_uses WHERE ts < ?", (plan.now - pass_keep_s,)
            ).rowcount
            plan.card_first_use += c.execute(
                "DELETE FROM card_first_use WHERE seq <= ? AND uid NOT IN (SELECT uid FROM cards)",
                (plan.upto_seq,),
            ).rowcount
        plan.kept_undelivered = int(
            self.conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE seq <= ?", (plan.upto_seq,)
            ).fetchone()[0]
        )

    def vacuum_step(self, plan: PurgePlan) -> int:
        """Give up to ``vacuum_pages`` free pages back to the file system; how many."""
        before = self.free_pages()
        if before == 0:
            return 0
        self.conn.execute(f"PRAGMA incremental_vacuum({int(self.vacuum_pages)})").fetchall()
        freed = before - self.free_pages()
        plan.pages_freed += freed
        return freed

    def free_pages(self) -> int:
        """Pages on the free list (always 0 once vacuumed)."""
        return int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])


def purge_now(retention: Retention, record: Callable[[Event], Any]) -> PurgePlan | None:
    """Run a whole purge on the calling thread (the controller's); record its event."""
    plan = retention.plan()
    if plan is None:
        return None
    while retention.delete_batch(plan) == retention.batch_rows:
        pass
    retention.delete_state(plan)
    _record(retention, plan, record)
    while retention.vacuum_step(plan):
        pass
    return plan


def _record(retention: Retention, plan: PurgePlan, record: Callable[[Event], Any]) -> None:
    if (
        plan.events
        or plan.quota_use
        or plan.pass_uses
        or plan.card_first_use
        or plan.site_quota_use
        or plan.site_pass_uses
    ):
        purge = record(plan.event(retention.retention_days))
        log.info(
            "purged %d events before %s (%d undelivered kept), %d quota rows, %d pass uses",
            plan.events,
            plan.cutoff,
            plan.kept_undelivered,
            plan.quota_use,
            plan.pass_uses,
        )
    else:
        log.debug("nothing to purge before %s", plan.cutoff)
        return
    if plan.undelivered_purged:
        detail = (
            f"storage: {plan.undelivered_purged} undelivered events purged, older than"
            f" {retention.undelivered_max_days} days (undelivered_max_days): the broker"
            " never had them"
        )
        log.warning("%s", detail)
        ref = purge.id if isinstance(purge, Event) else None
        record(Alarm.raised("device", detail, ref=ref))


class RetentionService:
    """A timer thread that has the controller purge once at start and then daily.

    Each step is submitted to the controller, so the purge never writes beside it,
    and readings that arrive meanwhile are decided between two steps.
    """

    def __init__(
        self,
        controller: Controller,
        retention: Retention,
        interval_s: float = DAY_S,
        step_timeout_s: float = 60.0,
        unsynced_retry_s: float = 600.0,
    ):
        self.controller = controller
        self.retention = retention
        self.interval_s = interval_s
        self.step_timeout_s = step_timeout_s
        self.unsynced_retry_s = unsynced_retry_s
        self.runs = 0
        self.failures = 0
        self.last: PurgePlan | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the timer thread; the first purge is right away."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer; a step already submitted finishes on the controller."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = self.interval_s
            try:
                self.last = self.run_once()
                self.runs += 1
                if self.last is None:
                    # A Pi often boots before NTP has answered: try again soon.
                    wait = min(self.interval_s, self.unsynced_retry_s)
            except _Stopped:
                return
            except Exception as exc:  # a failed purge is retried at the next turn
                self.failures += 1
                log.error("ledger purge failed: %s", exc)
            self._stop.wait(wait)

    def run_once(self) -> PurgePlan | None:
        """One purge, step by step on the controller thread."""
        r = self.retention
        plan = self._on_controller(r.plan)
        if plan is None:
            return None
        while self._on_controller(lambda: r.delete_batch(plan)) == r.batch_rows:
            pass
        self._on_controller(lambda: r.delete_state(plan))
        # _record is the controller's own recording (observers, counters, screen).
        record = self.controller._record
        self._on_controller(lambda: _record(r, plan, record))
        while self._on_controller(lambda: r.vacuum_step(plan)):
            pass
        return plan

    def _on_controller(self, fn: Callable[[], T]) -> T:
        fut: Future[T] = self.controller.submit(fn)
        waited = 0.0
        while True:
            try:
                return fut.result(timeout=0.5)
            except FutureTimeout:
                waited += 0.5
                if self._stop.is_set():
                    raise _Stopped() from None
                if waited >= self.step_timeout_s:
                    raise TimeoutError("the controller did not run the purge step") from None


class _Stopped(Exception):
    """The service was stopped while waiting for the controller."""
