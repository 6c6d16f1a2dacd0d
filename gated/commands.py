"""Commands from the central side (``T/cmd/{name}``), each answered on ``T/cmd_result``.

Every command is checked whole on the publisher thread, then its change runs on the
controller thread through :meth:`Controller.submit` (the ledger's one writer), so a
command is applied entirely or not at all. Refused, with a reason, and logged:
malformed JSON, a missing ``req``, a retained command (the broker would hand it over
again at every reconnect: a retained ``cmd/open`` would open the turnstile after each
restart), an unknown name, a ``req`` already seen (a replay), a command whose ``ts``
is older than ``max_age_s`` (queued during an outage: a remote open must not fire
hours later), and a registry delta out of version order.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from gated import registry_build, registry_sync
from gated.events import MODES
from gated.privacy import mask_uid

log = logging.getLogger(__name__)

NAMES = ("open", "mode", "registry", "revoke", "ping")
MAX_PAYLOAD = 8 * 1024 * 1024
MAX_ID = 64


class CommandError(ValueError):
    """A command refused before anything was changed."""


def _text(msg: dict[str, Any], key: str, default: str | None = None) -> str:
    value = msg.get(key, default)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID:
        raise CommandError(f"{key} is missing or not a short text")
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

    def __init__(self, controller: Any, max_age_s: float = 300.0, remember: int = 1000):
        self.controller = controller
        self.max_age_s = max_age_s
        self.remember = remember
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.refused = 0
        self.applied = 0
        clock = controller.clock
        self.snapshots = registry_build.Snapshots(
            controller.submit,
            controller.ledger.conn,
            lambda: datetime.fromtimestamp(clock.time(), UTC).isoformat(),
        )

    def handle(self, name: str, payload: bytes, retained: bool = False) -> Future[dict[str, Any]]:
        """The future result ``{"req", "ok", "error", ...}`` of command ``name``.

        ``retained``: the broker delivered it as a retained message (refused).
        """
        req: str | None = None
        try:
            if len(payload) > MAX_PAYLOAD:
                raise CommandError("payload too large")
            try:
                msg = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                raise CommandError("not valid JSON") from None
            if not isinstance(msg, dict):
                raise CommandError("not a JSON object")
            if retained:
                req = _req_of(msg)
                raise CommandError(
                    "retained command refused: publish commands without retain"
                    " (clear this one with an empty retained message)"
                )
            req = _text(msg, "req")
            if name not in NAMES:
                raise CommandError(f"unknown command {name[:32]!r}")
            self._check_age(msg)
            if req in self.seen:
                raise CommandError("duplicate req (already handled)")
            run = getattr(self, f"_{name}")(msg)
        except CommandError as exc:
            return self._refuse(name, req, str(exc))
        self._remember(req)
        fut: Future[dict[str, Any]] = Future()

        def finish(inner: Future[Any]) -> None:
            exc = inner.exception()
            if exc is None:
                extra = inner.result() or {}
                self.applied += 1
                log.info("command %s %s applied", name, req)
                fut.set_result({"req": req, "ok": True, "error": None, **extra})
            else:
                fut.set_result(self._refuse(name, req, str(exc)).result())

        self.controller.submit(run).add_done_callback(finish)
        return fut

    def _refuse(self, name: str, req: str | None, reason: str) -> Future[dict[str, Any]]:
        self.refused += 1
        log.warning("command %s (req %s) refused: %s", name[:32], req, reason)
        return _done({"req": req, "ok": False, "error": reason})

    def _remember(self, req: str) -> None:
        self.seen[req] = None
        while len(self.seen) > self.remember:
            self.seen.popitem(last=False)

    def _check_age(self, msg: dict[str, Any]) -> None:
        ts = msg.get("ts")
        if ts is None:
            return
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise CommandError("ts is not unix seconds")
        age = self.controller.clock.time() - float(ts)
        if age > self.max_age_s:
            raise CommandError(f"stale command ({age:.0f} s old)")

    @staticmethod
    def _by(msg: dict[str, Any]) -> str:
        return "mqtt:" + _text(msg, "by", "central")

    # -- each command: check here, return the callable the controller runs ------------

    def _open(self, msg: dict[str, Any]) -> Any:
        by = self._by(msg)
        ctl = self.controller
        return lambda: {"event": ctl.open_once(by)["id"]}

    def _mode(self, msg: dict[str, Any]) -> Any:
        mode = msg.get("mode")
        if mode not in MODES:
            raise CommandError(f"mode is not one of {', '.join(MODES)}")
        by = self._by(msg)
        ctl = self.controller
        return lambda: {"event": ctl.set_mode(mode, by)["id"]}

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
