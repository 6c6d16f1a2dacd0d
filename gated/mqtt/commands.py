"""Commands from the central side (``T/cmd/{name}``), each answered on ``T/cmd_result``.

Every command is checked whole on the publisher thread, then its change runs on the
controller thread through :meth:`Controller.submit` (the ledger's one writer), so a
command is applied entirely or not at all. Refused, with a reason, counted and logged:
anything the input guard (:mod:`gated.mqtt.inbound`) refuses (too large, too deep, a
number out of range, not JSON), a missing ``req`` or one with control characters, a
retained command (the broker would hand it over again at every reconnect: a retained
``cmd/open`` would open the turnstile after each restart), an unknown name, a ``ts``
that is not a finite number, an ``open`` without ``ts``, a ``ts`` more than
``max_age_s`` away from the gate's clock while the clock is synchronised (a command
queued during an outage must not fire hours later, nor one stamped in the future), a
``req`` already handled (a replay), and a registry delta out of version order.

Handled ``req`` values are kept in the ``command_reqs`` table with the gate's time, so a
replay is refused after a restart too. They are kept ``remember_s`` (30 days) and
pruned only while the clock is synchronised. That is far longer than the ``ts`` window:
a replayed command with a ``ts`` is refused as stale 300 s after it was stamped anyway,
so the table matters for commands without ``ts`` (``open`` is refused without one) and
while the clock is not synchronised (the window is not applied then: a Pi without
network may still be in 1970, and a stale ``ts`` check would refuse every command).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from gated import registry_build
from gated.events import MODES
from gated.mqtt import registry_sync
from gated.mqtt.inbound import COMMAND_MAX_BYTES, InputRefused, decode
from gated.privacy import mask_uid
from gated.storage import Transaction

log = logging.getLogger(__name__)

NAMES = ("open", "mode", "registry", "revoke", "ping")
MAX_ID = 64
#: Default of ``[mqtt] registry_max_bytes``: the limit of ``cmd/registry`` too (a delta).
REGISTRY_MAX_BYTES = 64 * 1024 * 1024
#: How long a handled ``req`` is remembered (see the module docstring).
REMEMBER_S = 30 * 86400.0


class CommandError(ValueError):
    """A command refused before anything was changed; ``code`` is its counter's name."""

    def __init__(self, reason: str, code: str = "invalid"):
        super().__init__(reason)
        self.code = code


def _text(msg: dict[str, Any], key: str, default: str | None = None) -> str:
    value = msg.get(key, default)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID:
        raise CommandError(f"{key} is missing or not a short text", key)
    if not value.isprintable():
        # A newline in a req once forged a line of the gate's journal.
        raise CommandError(f"{key} holds a control character (newline, tab, ...)", key)
    return value.strip()


def _req_of(msg: dict[str, Any]) -> str | None:
    """``req`` if it is a valid one, else None (for the answer to a refused command)."""
    try:
        return _text(msg, "req")
    except CommandError:
        return None


def _done(result: dict[str, Any]) -> Future[dict[str, Any]]:
    fut: Future[dict[str, Any]] = Future()
    fut.set_result(result)
    return fut


class Commands:
    """Checks commands and runs them on the controller; :meth:`handle` never blocks."""

    def __init__(
        self,
        controller: Any,
        max_age_s: float = 300.0,
        registry_max_bytes: int = REGISTRY_MAX_BYTES,
        remember_s: float = REMEMBER_S,
    ):
        self.controller = controller
        #: Largest distance in seconds of a command's ``ts`` from the gate's clock.
        self.max_age_s = max_age_s
        self.registry_max_bytes = registry_max_bytes
        self.remember_s = remember_s
        #: Messages refused (commands and registry messages), in all and by rule.
        self.refused = 0
        self.refusals: Counter[str] = Counter()
        self.applied = 0
        clock = controller.clock
        self.snapshots = registry_build.Snapshots(
            controller.submit,
            controller.ledger.conn,
            lambda: datetime.fromtimestamp(clock.time(), UTC).isoformat(),
        )
        self._count_lock = threading.Lock()

    def refusal_counts(self) -> dict[str, int]:
        """A copy of the refusals by code (any thread)."""
        with self._count_lock:
            return dict(self.refusals)

    def count_refused(self, code: str) -> None:
        """Count one refused message (any thread); ``code`` names the rule it broke."""
        with self._count_lock:
            self.refused += 1
            self.refusals[code] += 1

    def handle(self, name: str, payload: bytes, retained: bool = False) -> Future[dict[str, Any]]:
        """The future result ``{"req", "ok", "error", ...}`` of command ``name``; never raises.

        ``retained``: the broker delivered it as a retained message (refused).
        """
        req: str | None = None
        try:
            limit = self.registry_max_bytes if name == "registry" else COMMAND_MAX_BYTES
            try:
                msg = decode(payload, limit)
            except InputRefused as exc:
                raise CommandError(exc.reason, exc.code) from None
            if not isinstance(msg, dict):
                raise CommandError("not a JSON object", "json")
            if retained:
                req = _req_of(msg)
                raise CommandError(
                    "retained command refused: publish commands without retain"
                    " (clear this one with an empty retained message)",
                    "retained",
                )
            req = _text(msg, "req")
            if name not in NAMES:
                raise CommandError(f"unknown command {name[:32]!r}", "unknown")
            self._check_ts(name, msg)
            run = getattr(self, f"_{name}")(msg)
        except CommandError as exc:
            return self._refuse(name, req, str(exc), exc.code)
        except Exception as exc:  # a bug must not take the session down with it
            log.exception("command %r could not be checked", name[:32])
            return self._refuse(name, req, f"internal error ({type(exc).__name__})", "error")
        fut: Future[dict[str, Any]] = Future()

        def once() -> Any:
            if not self._remember(req):
                raise CommandError("duplicate req (already handled)", "duplicate")
            return run()

        def finish(inner: Future[Any]) -> None:
            exc = inner.exception()
            if exc is None:
                extra = inner.result() or {}
                self.applied += 1
                log.info("command %s %s applied", name, req)
                fut.set_result({"req": req, "ok": True, "error": None, **extra})
            else:
                code = exc.code if isinstance(exc, CommandError) else "failed"
                fut.set_result(self._refuse(name, req, str(exc), code).result())

        self.controller.submit(once).add_done_callback(finish)
        return fut

    def _refuse(self, name: str, req: str | None, reason: str, code: str) -> Future[dict[str, Any]]:
        self.count_refused(code)
        log.warning("command %r (req %s) refused: %s", name[:32], req, reason[:200])
        return _done({"req": req, "ok": False, "error": reason})

    def _remember(self, req: str) -> bool:
        """Record ``req`` as handled (controller thread); False if it already was."""
        ctl = self.controller
        now = ctl.clock.time()
        with Transaction(ctl.ledger.conn) as c:
            if ctl.ledger.clock_synced():
                c.execute("DELETE FROM command_reqs WHERE ts < ?", (now - self.remember_s,))
            added = c.execute(
                "INSERT OR IGNORE INTO command_reqs(req, ts) VALUES (?, ?)", (req, now)
            )
            return added.rowcount == 1

    def _check_ts(self, name: str, msg: dict[str, Any]) -> None:
        ts = msg.get("ts")
        if ts is None:
            if name == "open":
                # Without a ts, only the req memory stands between a recorded open and
                # its replay: an open is the one command that must carry its time.
                raise CommandError("open needs ts (unix seconds)", "ts")
            return
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise CommandError("ts is not unix seconds", "ts")
        if not self.controller.ledger.clock_synced():
            return  # the gate's clock may be years off: it cannot judge a ts
        skew = float(ts) - self.controller.clock.time()
        if skew < -self.max_age_s:
            raise CommandError(f"stale command ({-skew:.0f} s old)", "ts")
        if skew > self.max_age_s:
            raise CommandError(f"ts {skew:.0f} s ahead of the gate's clock", "ts")

    @staticmethod
    def _by(msg: dict[str, Any]) -> str:
        return "mqtt:" + _text(msg, "by", "central")

    # -- each command: check here, return the callable the controller runs ------------

    def _open(self, msg: dict[str, Any]) -> Any:
        by = self._by(msg)
        desk = self.controller.desk
        return lambda: {"event": desk.open_once(by)["id"]}

    def _mode(self, msg: dict[str, Any]) -> Any:
        mode = msg.get("mode")
        if mode not in MODES:
            raise CommandError(f"mode is not one of {', '.join(MODES)}")
        by = self._by(msg)
        desk = self.controller.desk
        return lambda: {"event": desk.set_mode(mode, by)["id"]}

    def _registry(self, msg: dict[str, Any]) -> Any:
        body = {k: v for k, v in msg.items() if k not in ("req", "ts", "by")}
        if body.get("type") != "delta":
            raise CommandError("cmd/registry takes a delta; snapshots go on the registry topic")
        try:
            change = registry_sync.parse(body)
        except registry_sync.RegistryMessageError as exc:
            raise CommandError(str(exc)) from None
        return self.registry_runner(change)

    def apply_registry(self, change: registry_sync.Change) -> Future[dict[str, Any]]:
        """Apply a checked change on the controller: a delta in one step, a snapshot in many."""
        if change.kind == "snapshot":
            return self.snapshots.apply(change)
        return self.controller.submit(self.registry_runner(change))

    def registry_runner(self, change: registry_sync.Change) -> Any:
        """The controller-thread step that applies a checked registry change."""
        conn = self.controller.ledger.conn
        clock = self.controller.clock

        def run() -> dict[str, Any]:
            when = datetime.fromtimestamp(clock.time(), UTC).isoformat()
            detail = registry_sync.apply(conn, change, when)
            log.info("registry: %s", detail)
            return {"version": registry_sync.applied_version(conn)}

        return run

    def _revoke(self, msg: dict[str, Any]) -> Any:
        if sum(k in msg for k in ("card", "jti", "person")) != 1:
            raise CommandError("give exactly one of card, jti or person")
        reg = self.controller.registry
        clock = self.controller.clock
        if "person" in msg:
            # The person's cards and every pass issued to them (``sub``), whatever its jti.
            pid = _text(msg, "person")
            return lambda: {
                "cards": reg.revoke_person(
                    pid, datetime.fromtimestamp(clock.time(), UTC).isoformat()
                )
            }
        if "card" in msg:
            uid = _text(msg, "card")

            def revoke_card() -> dict[str, Any]:
                when = datetime.fromtimestamp(clock.time(), UTC).isoformat()
                if not reg.revoke_card(uid, when):
                    raise LookupError(f"no active card ending {mask_uid(uid)}")
                return {}

            return revoke_card
        jti = _text(msg, "jti")

        def revoke_pass() -> dict[str, Any]:
            reg.revoke_pass(jti, datetime.fromtimestamp(clock.time(), UTC).isoformat())
            return {}

        return revoke_pass

    def _ping(self, msg: dict[str, Any]) -> Any:
        ctl = self.controller
        return lambda: {"mode": ctl.mode, "last_seq": ctl.ledger.last_seq()}
