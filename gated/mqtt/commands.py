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
``req`` already handled (a replay), a registry delta out of version order, and a
``cmd/replay`` range that is not 1 to 10,000 seq numbers (:mod:`gated.mqtt.replay`).

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
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gated import registry_build
from gated.clock import iso_utc
from gated.events import MODES, Revoke
from gated.mqtt import registry_sync
from gated.mqtt.inbound import COMMAND_MAX_BYTES, InputRefused, decode
from gated.mqtt.replay import ReplayRefused, parse_range
from gated.privacy import mask_uid
from gated.registry import normalise_uid
from gated.storage import Transaction

if TYPE_CHECKING:
    from gated.controller import Controller

log = logging.getLogger(__name__)

#: What a checked command runs on the controller thread: its result's extra fields.
Runner = Callable[[], dict[str, Any]]

NAMES = ("open", "mode", "registry", "revoke", "ping", "replay")
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


# -- the bodies: pydantic models whose errors carry the answer's reason and its code ----


def _short_text(value: Any, info: ValidationInfo) -> Any:
    key = info.field_name or "value"
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID:
        raise PydanticCustomError(key, "{key} is missing or not a short text", {"key": key})
    if not value.isprintable():
        # A newline in a req once forged a line of the gate's journal.
        raise PydanticCustomError(
            key, "{key} holds a control character (newline, tab, ...)", {"key": key}
        )
    return value.strip()


def _unix_seconds(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PydanticCustomError("ts", "ts is not unix seconds")
    return float(value)


def _mode(value: Any) -> Any:
    if value not in MODES:
        raise PydanticCustomError(
            "invalid", "mode is not one of {modes}", {"modes": ", ".join(MODES)}
        )
    return value


#: A short printable text (an id, a name); ``None`` (a JSON null) is refused as missing.
ShortText = Annotated[str, BeforeValidator(_short_text)]
_OptionalText = Annotated[str | None, BeforeValidator(_short_text)]


class _Body(BaseModel):
    # Other keys are the command's own (or the next check's): not refused here.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Envelope(_Body):
    """What every command carries: its ``req``."""

    req: ShortText = Field(default=None, validate_default=True)


class Stamp(_Body):
    """When the command was sent: optional but for ``open``, checked after its name."""

    ts: Annotated[float | None, BeforeValidator(_unix_seconds)] = None


class ByBody(_Body):
    """Who sent an ``open`` or ``mode`` (``mqtt:`` is put before it)."""

    by: ShortText = "central"


class ModeBody(_Body):
    """``cmd/mode``: the mode to set."""

    mode: Annotated[str, BeforeValidator(_mode)] = Field(default=None, validate_default=True)


class RevokeBody(_Body):
    """``cmd/revoke``: exactly one of a card uid, a pass's jti or a person id."""

    card: _OptionalText = None
    jti: _OptionalText = None
    person: _OptionalText = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and sum(k in data for k in ("card", "jti", "person")) != 1:
            raise PydanticCustomError("invalid", "give exactly one of card, jti or person")
        return data


_B = TypeVar("_B", bound=_Body)


def _check(model: type[_B], msg: dict[str, Any]) -> _B:
    """``msg`` read as ``model``; the first problem as a :class:`CommandError`."""
    try:
        return model.model_validate(msg)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise CommandError(first["msg"], first["type"]) from None


def _req_of(msg: dict[str, Any]) -> str | None:
    """``req`` if it is a valid one, else None (for the answer to a refused command)."""
    try:
        return _check(Envelope, msg).req
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
        controller: Controller,
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
            lambda: iso_utc(clock.time()),
        )
        self._count_lock = threading.Lock()
        #: Queues a checked ``cmd/replay`` range (``req``, from, to) on the publisher's
        #: thread; its future is the answer. Set by the publisher.
        self.replay: Callable[[str, int, int], Future[dict[str, Any]]] | None = None

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
            req = _check(Envelope, msg).req
            if name not in NAMES:
                raise CommandError(f"unknown command {name[:32]!r}", "unknown")
            self._check_ts(name, _check(Stamp, msg).ts)
            run = getattr(self, f"_{name}")(msg)
        except CommandError as exc:
            return self._refuse(name, req, str(exc), exc.code)
        except Exception as exc:  # a bug must not take the session down with it
            log.exception("command %r could not be checked", name[:32])
            return self._refuse(name, req, f"internal error ({type(exc).__name__})", "error")
        fut: Future[dict[str, Any]] = Future()

        def once() -> dict[str, Any]:
            if not self._remember(req):
                raise CommandError("duplicate req (already handled)", "duplicate")
            return run()

        def finish(inner: Future[dict[str, Any]]) -> None:
            exc = inner.exception()
            later: Any = None if exc is not None else inner.result()
            if isinstance(later, Future):
                later.add_done_callback(finish)  # cmd/replay: done off the controller
                return
            if exc is None:
                extra = inner.result() or {}
                self.applied += 1
                log.info("command %s %s applied", name, req)
                fut.set_result({"req": req, "ok": True, "error": None, **extra})
            else:
                code = exc.code if isinstance(exc, (CommandError, ReplayRefused)) else "failed"
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

    def _check_ts(self, name: str, ts: float | None) -> None:
        if ts is None:
            if name == "open":
                # Without a ts, only the req memory stands between a recorded open and
                # its replay: an open is the one command that must carry its time.
                raise CommandError("open needs ts (unix seconds)", "ts")
            return
        if not self.controller.ledger.clock_synced():
            return  # the gate's clock may be years off: it cannot judge a ts
        skew = ts - self.controller.clock.time()
        if skew < -self.max_age_s:
            raise CommandError(f"stale command ({-skew:.0f} s old)", "ts")
        if skew > self.max_age_s:
            raise CommandError(f"ts {skew:.0f} s ahead of the gate's clock", "ts")

    @staticmethod
    def _by(msg: dict[str, Any]) -> str:
        return "mqtt:" + _check(ByBody, msg).by

    # -- each command: check here, return the callable the controller runs ------------

    def _open(self, msg: dict[str, Any]) -> Runner:
        by = self._by(msg)
        desk = self.controller.desk
        return lambda: {"event": desk.open_once(by)["id"]}

    def _mode(self, msg: dict[str, Any]) -> Runner:
        mode = _check(ModeBody, msg).mode
        by = self._by(msg)
        desk = self.controller.desk
        return lambda: {"event": desk.set_mode(mode, by)["id"]}

    def _registry(self, msg: dict[str, Any]) -> Runner:
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

    def registry_runner(self, change: registry_sync.Change) -> Runner:
        """The controller-thread step that applies a checked registry change."""
        conn = self.controller.ledger.conn
        clock = self.controller.clock

        def run() -> dict[str, Any]:
            when = iso_utc(clock.time())
            detail = registry_sync.apply(conn, change, when)
            log.info("registry: %s", detail)
            return {"version": registry_sync.applied_version(conn)}

        return run

    def _revoke(self, msg: dict[str, Any]) -> Runner:
        body = _check(RevokeBody, msg)
        by = self._by(msg)
        ctl = self.controller
        reg, clock = ctl.registry, ctl.clock
        # Each revocation is recorded as a ``revoke`` event in the same step, so the gate's
        # peers revoke the same (docs/contracts.md §4b); a refused one records nothing.
        if body.person is not None:
            # The person's cards and every pass issued to them (``sub``), whatever its jti.
            pid = body.person

            def revoke_person() -> dict[str, Any]:
                cards = reg.revoke_person(pid, iso_utc(clock.time()))
                event = ctl._record(Revoke.of("person", pid, pid, by))
                return {"cards": cards, "event": event.id}

            return revoke_person
        if body.card is not None:
            uid = normalise_uid(body.card)

            def revoke_card() -> dict[str, Any]:
                when = iso_utc(clock.time())
                if not reg.revoke_card(uid, when):
                    raise LookupError(f"no active card ending {mask_uid(uid)}")
                owner = reg.card(uid).person
                event = ctl._record(Revoke.of("card", uid, owner.id if owner else None, by))
                return {"event": event.id}

            return revoke_card
        jti = body.jti
        assert jti is not None  # exactly one of the three

        def revoke_pass() -> dict[str, Any]:
            reg.revoke_pass(jti, iso_utc(clock.time()))
            return {"event": ctl._record(Revoke.of("pass", jti, None, by)).id}

        return revoke_pass

    def _ping(self, msg: dict[str, Any]) -> Runner:
        ctl = self.controller
        return lambda: {"mode": ctl.mode, "last_seq": ctl.ledger.last_seq()}

    def _replay(self, msg: dict[str, Any]) -> Any:
        try:
            first, last = parse_range(msg)
        except ReplayRefused as exc:
            raise CommandError(str(exc), exc.code) from None
        replay, req = self.replay, _check(Envelope, msg).req
        if replay is None:
            raise CommandError("replay needs the publisher (no broker configured)", "replay")
        # The controller thread only remembers the req and queues the range: the reading
        # and publishing are the publisher thread's (gated/mqtt/replay.py).
        return lambda: replay(req, first, last)
