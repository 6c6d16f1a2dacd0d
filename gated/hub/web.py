"""The fleet page: every gate of the district, its alarms, the day's lists (docs/hub.md).

aiohttp on ``[web] listen``, on a thread and an event loop of its own, like the gate's
status screen (:mod:`gated.status.server`), whose rules it reuses: the ``Host`` header
must name this page (DNS rebinding: 421), open connections are bounded (503), every
answer carries the same security headers, a POST must be same-origin JSON with the
session's CSRF token, and operator PINs (``[web] operators``, hashes from ``gated
hash-pin``) are tried within the lockout rules of :class:`gated.status.auth.GuardAuth`.

A client that is not on loopback sees nothing but the page's shell, ``/healthz`` and the
login until an operator logs in; one on this machine (the hub's console, a Prometheus
beside it) reads without a login. So the page must not sit behind a reverse proxy on
the hub's own machine (every client would look local): serve it with ``tls_cert_file``.

Reads go through a store connection of the page's own, on one worker thread; the reports
(the day's report, the history, today's black list for the gates' order) through another
connection on a thread of their own, so a long report never holds up the gates, the live
stream or ``/healthz``. The ingest tells the page what changed with
:meth:`HubWeb.notify` (any thread); the page reads the gate's row back from the store,
so what a browser is shown is what the store holds. Personal data is masked as on the
gate's screen (:func:`gated.status.view.screen_event`); everything the page shows is set
with ``textContent``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from aiohttp import web
from aiohttp_sse import sse_response
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field, ValidationError, field_validator

from gated import __version__
from gated.clock import iso_utc
from gated.hub import reports
from gated.hub.config import HubConfig
from gated.hub.registry import latest_versions
from gated.hub.stats import HubStats
from gated.hub.store import HubStore, is_online
from gated.status.actions import check_pin, csrf_session, json_body
from gated.status.auth import GUARD_ID, GuardAuth, check_pin_text, is_loopback
from gated.status.bodies import Body
from gated.status.limits import (
    ConnectionLimit,
    LoopErrors,
    busy_response,
    host_allowed,
    host_name,
)
from gated.status.server import with_secure_headers
from gated.status.view import screen_event

log = logging.getLogger(__name__)

T = TypeVar("T")

COOKIE = "gated_hub_session"
#: The lockout of the gate's screen at its strictest (docs/contracts.md §8).
LOCKOUT_AFTER = 5
LOCKOUT_ALL_AFTER = 20
LOCKOUT_S = 300.0
SESSION_S = 12 * 3600.0
MAX_CONNECTIONS = 64
MAX_CLIENTS = 32
CLIENT_QUEUE = 500
HEARTBEAT_S = 10.0
GONE_CHECK_S = 1.0
#: Seconds a store read may take before the page answers 503.
READ_TIMEOUT_S = 30.0
#: ... and before ``/healthz`` says it does not answer.
HEALTH_TIMEOUT_S = 5.0
#: How long today's black list is reused for the gates' order.
BLACK_TTL_S = 60.0
#: How long the gates wait for the first black list (then go without it until it comes).
BLACK_WAIT_S = 5.0
#: Seconds gathering the gates the ingest named before their rows are read back.
GATE_BATCH_S = 1.0
MAX_DAYS = 62
#: What a client off this machine may reach without a login.
OPEN_PATHS = ("/", "/healthz", "/api/session", "/api/login", "/favicon.ico")
STATIC = ("app.js", "style.css", "i18n.js")
_TYPES = {"js": "text/javascript", "css": "text/css"}
Message = tuple[str, str] | None


def _static(name: str) -> bytes:
    return resources.files("gated.hub").joinpath("static", name).read_bytes()


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _text(value: Any, limit: int = 200) -> str | None:
    """A string field of a gate's status as the page may show it (None if not a string)."""
    return value[:limit] if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _devices(status: Any) -> dict[str, dict[str, Any]]:
    """The devices of a gate's last status: name -> ok and detail, nothing else."""
    devices = status.get("devices") if isinstance(status, dict) else None
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(devices, dict):
        return out
    for name, health in list(devices.items())[:32]:
        if not isinstance(health, dict) or not isinstance(health.get("ok"), bool):
            continue
        out[str(name)[:32]] = {"ok": health["ok"], "detail": _text(health.get("detail")) or ""}
    return out


def shown_alarm(body: dict[str, Any]) -> dict[str, Any]:
    """An alarm as the page shows it: masked as on the gate's screen, with its gate."""
    out = screen_event(body)
    out["site"], out["gate"] = body.get("site"), body.get("gate")
    return out


class LoginBody(Body):
    """``POST /api/login``."""

    MESSAGES: ClassVar[dict[str, str]] = {
        "operator": "operator: 1 to 32 letters, digits, '_', '.', '-'",
        "pin": "pin: 4 to 64 characters",
    }
    operator: str
    pin: str

    @field_validator("operator")
    @classmethod
    def _name(cls, v: str) -> str:
        if not GUARD_ID.match(v):
            raise ValueError("not an operator name")
        return v

    @field_validator("pin")
    @classmethod
    def _pin_text(cls, v: str) -> str:
        if why := check_pin_text(v):
            raise ValueError(why)
        return v


class AckBody(Body):
    """``POST /api/alarms/ack``: the alarm's gate and seq."""

    MESSAGES: ClassVar[dict[str, str]] = {
        "site": "site, gate and seq of the alarm are required",
        "gate": "site, gate and seq of the alarm are required",
        "seq": "seq: the alarm's seq, a whole number from 1",
    }
    site: str = Field(max_length=64)
    gate: str = Field(max_length=64)
    seq: int = Field(ge=1, le=2**53)


class _FleetCollector:
    """The hub's figures at scrape time: counters of :class:`HubStats` and the store's
    gauges, read by the scrape (``data``) before the registry renders them."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def collect(self) -> Iterator[Any]:
        d = self.data
        counts: dict[str, int] = d.get("counts", {})
        for name, key, text in (
            ("gated_hub_events_stored", "stored", "Events stored (once each)."),
            ("gated_hub_duplicates", "duplicates", "Events received again (not stored)."),
            ("gated_hub_statuses", "statuses", "Gate status messages taken."),
            ("gated_hub_replay_requests", "replay_requests", "cmd/replay asked of gates."),
            ("gated_hub_replay_answers", "replay_answers", "Replay answers received."),
            ("gated_hub_commits", "commits", "Store transactions committed."),
        ):
            family = CounterMetricFamily(name, text)
            family.add_metric([], counts.get(key, 0))
            yield family
        refused = CounterMetricFamily(
            "gated_hub_refused", "Broker messages refused, by the rule they broke.", labels=["code"]
        )
        for code, n in sorted(d.get("refused", {}).items()):
            refused.add_metric([code], n)
        yield refused
        missing = GaugeMetricFamily(
            "gated_hub_missing",
            "Events of a gate the hub knows exist and does not hold.",
            labels=["site", "gate"],
        )
        conflicts = GaugeMetricFamily(
            "gated_hub_conflicts",
            "Events of a gate whose seq the hub holds with another id (not stored).",
            labels=["site", "gate"],
        )
        online = GaugeMetricFamily(
            "gated_hub_gate_online",
            "1 while a gate is online, 0 when not.",
            labels=["site", "gate"],
        )
        for row in d.get("gates", []):
            missing.add_metric([row["site"], row["gate"]], row["missing"])
            conflicts.add_metric([row["site"], row["gate"]], row["conflicts"])
            online.add_metric([row["site"], row["gate"]], 1 if row["online"] else 0)
        yield missing
        yield conflicts
        yield online
        for name, value, text in (
            ("gated_hub_gates", d.get("gates_total", 0), "Gates the hub knows."),
            ("gated_hub_gates_online", d.get("gates_online", 0), "Gates online now."),
            ("gated_hub_events", d.get("events", math.nan), "Events held in the store."),
            (
                "gated_hub_last_commit_age_seconds",
                d.get("last_commit_age", math.nan),
                "Seconds since the hub last committed a transaction (NaN: none yet).",
            ),
            (
                "gated_hub_broker_connected",
                1 if d.get("connected") else 0,
                "1 while the broker is connected.",
            ),
        ):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], value)
            yield gauge


class HubWeb:
    """The fleet page and its API; ``start()`` serves on a thread of its own."""

    def __init__(
        self,
        config: HubConfig,
        stats: HubStats,
        store_path: Path | str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.config = config
        self.stats = stats
        self.store_path = Path(store_path)
        self.wall = wall
        w = config.web
        host, _, port = w.listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.auth = GuardAuth(
            "",
            dict(w.operators),
            lockout_after=LOCKOUT_AFTER,
            lockout_gate_after=LOCKOUT_ALL_AFTER,
            lockout_s=LOCKOUT_S,
            session_s=SESSION_S,
            clock=clock,
        )
        if not is_loopback(self.host) and not self.auth.enabled:
            raise ValueError("the fleet page listens beyond loopback only with [web] operators")
        me = socket.gethostname().lower().rstrip(".")
        self.host_names = {*w.host_names, me, f"{me}.local"}
        self.tls: ssl.SSLContext | None = None
        if w.tls_cert_file is not None and w.tls_key_file is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(w.tls_cert_file, w.tls_key_file)
        self.registry = CollectorRegistry()
        self.fleet = _FleetCollector()
        self.registry.register(self.fleet)
        r = self.registry
        self.logins = Counter(
            "gated_hub_web_logins",
            "Operator PIN tries: checked (ok, wrong), or refused unchecked (locked).",
            ["result"],
            registry=r,
        )
        self.refused = Counter(
            "gated_hub_web_refused",
            "Connections and live pages refused with 503, by what was full.",
            ["reason"],
            registry=r,
        )
        self.clients_gauge = Gauge(
            "gated_hub_web_clients", "Pages connected to the live stream.", registry=r
        )
        self.loop = asyncio.new_event_loop()
        self.clients: set[asyncio.Queue[Message]] = set()
        self.streams = 0
        self.url = ""
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hub-web-db")
        self._report_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="hub-web-report"
        )
        self._report_store: HubStore | None = None
        self._black_task: asyncio.Future[None] | None = None
        #: Whether a page was given gates by the black list held now.
        self._black_shown = False
        self._pins = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hub-web-pin")
        self._store: HubStore | None = None
        self._black: tuple[float, dict[tuple[str, str], list[str]]] = (-1e9, {})
        self._dirty: set[tuple[str, str]] = set()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refusal_logged = -1e9

    # -- lifecycle (any thread) -------------------------------------------------------

    def start(self) -> None:
        """Serve on a thread of its own; a port that cannot be had is logged, not fatal."""
        self._thread = threading.Thread(target=self._run, name="hub-web", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)

    @property
    def serving(self) -> bool:
        return bool(self.url)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_default_executor(self._pins)
        try:
            self.loop.run_until_complete(self._startup())
        except (OSError, ssl.SSLError) as exc:
            log.error("fleet page not started on %s:%d: %s", self.host, self.port, exc)
            self._ready.set()
            self.loop.close()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self._shutdown())
            self.loop.close()

    def stop(self) -> None:
        """Close the streams and the socket; safe to call twice."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join(timeout=10)
        with contextlib.suppress(RuntimeError):  # stopped before
            self._pool.submit(self._close_store).result(timeout=10)
        with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
            self._report_pool.submit(self._close_report_store).result(timeout=30)
        self._pool.shutdown(wait=True)
        self._report_pool.shutdown(wait=False)
        self._pins.shutdown(wait=False)

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _close_report_store(self) -> None:
        if self._report_store is not None:
            self._report_store.close()
            self._report_store = None

    def notify(self, kind: str, data: dict[str, Any]) -> None:
        """What the ingest committed (any thread): ``alarm`` (the alarm event's body) or
        ``gate`` (the gate's row); the page reads the gate back and tells every browser."""
        if not self.clients:
            return  # no live page to tell: a page that opens reads everything at its hello
        with contextlib.suppress(RuntimeError):  # stopped: the ingest goes on
            self.loop.call_soon_threadsafe(self._on_notify, kind, data)

    async def _startup(self) -> None:
        self.loop.set_exception_handler(LoopErrors(time.monotonic, page="fleet page"))
        app = web.Application(
            middlewares=[with_secure_headers, self._admit], client_max_size=16 * 1024
        )
        g = app.router.add_get
        g("/", self.page)
        g("/static/{name}", self.static)
        g("/api/session", self.session_info)
        g("/api/gates", self.api_gates)
        g("/api/alarms", self.api_alarms)
        g("/api/report/daily", self.api_report)
        g("/api/compliance", self.api_compliance)
        g("/api/events", self.api_events)
        g("/metrics", self.metrics)
        g("/healthz", self.healthz)
        app.router.add_post("/api/login", self.login)
        app.router.add_post("/api/logout", self.logout)
        app.router.add_post("/api/alarms/ack", self.ack)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None  # set up above
        factory = ConnectionLimit(
            server, MAX_CONNECTIONS, self._refused_connection, busy_response("fleet page")
        )
        self._listener = await self.loop.create_server(
            factory, self.host, self.port, reuse_address=True, ssl=self.tls, backlog=128
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])
        scheme = "https" if self.tls else "http"
        shown = self.host if ":" not in self.host else f"[{self.host}]"
        self.url = f"{scheme}://{shown}:{self.port}"
        self._spawn(self._housekeeping())
        log.info("fleet page on %s", self.url)

    async def _shutdown(self) -> None:
        for q in list(self.clients):
            q.put_nowait(None)
        for task in list(self._tasks):
            task.cancel()
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refused_connection(self) -> None:
        self.refused.labels("connections").inc()
        self._warn_refused(f"too many open connections ({MAX_CONNECTIONS})")

    def _warn_refused(self, what: str) -> None:
        now = time.monotonic()
        if now - self._refusal_logged > 60:
            self._refusal_logged = now
            log.warning("fleet page: %s: answering 503 (logged once a minute)", what)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for s in self.auth.expired():
                log.info("fleet page: operator %s: login expired", s.guard)

    # -- the store, on the page's worker thread ---------------------------------------

    def _db(self) -> HubStore:
        if self._store is None:
            self._store = HubStore(self.store_path)
        return self._store

    async def read(self, fn: Callable[[HubStore], T], timeout: float = READ_TIMEOUT_S) -> T:
        """``fn(store)`` on the page's store thread, awaited without blocking the loop."""
        fut = self.loop.run_in_executor(self._pool, lambda: fn(self._db()))
        return await asyncio.wait_for(fut, timeout)

    def _reports_db(self) -> HubStore:
        if self._report_store is None:
            self._report_store = HubStore(self.store_path)
        return self._report_store

    async def report(self, fn: Callable[[HubStore], T], timeout: float = READ_TIMEOUT_S) -> T:
        """``fn(store)`` on the reports' own thread and store connection."""
        fut = self.loop.run_in_executor(self._report_pool, lambda: fn(self._reports_db()))
        return await asyncio.wait_for(fut, timeout)

    def _unacked(self, store: HubStore) -> list[dict[str, Any]]:
        return [shown_alarm(a) for a in store.alarms(unacked=True, limit=200)]

    async def _black_list(self) -> dict[tuple[str, str], list[str]]:
        """Today's black list, by gate: reused for ``BLACK_TTL_S``, then made again on the
        reports' thread while the stale one is used; the gates whose place on it changed
        are sent to the pages again when it comes. Only the first one is waited for (up
        to ``BLACK_WAIT_S``)."""
        at = self._black[0]
        if time.monotonic() - at >= BLACK_TTL_S and self._black_task is None:
            self._black_task = asyncio.ensure_future(self._refresh_black(), loop=self.loop)
        task = self._black_task
        if at < 0 and task is not None:
            with contextlib.suppress(Exception):  # too slow, or failed: logged by the task
                await asyncio.wait_for(asyncio.shield(task), BLACK_WAIT_S)
        self._black_shown = True
        return self._black[1]

    async def _refresh_black(self) -> None:
        try:
            now = self.wall()
            report = await self.report(
                lambda s: reports.daily(s, self.config, self.today(), now=now, cards=False)
            )
            black = {
                (str(b["site"]), str(b["gate"])): [str(w) for w in b["why"]]
                for b in report["black"]
            }
            old, shown = self._black[1], self._black_shown
            self._black, self._black_shown = (time.monotonic(), black), False
            changed = {k for k in old.keys() | black.keys() if old.get(k) != black.get(k)}
            for site, gate in changed if shown else ():
                self._on_notify("gate", {"site": site, "gate": gate})
        except Exception as exc:  # the store is busy or gone: the next read retries
            log.warning("fleet page: today's black list not made: %s", exc)
        finally:
            self._black_task = None

    def today(self) -> date:
        return datetime.fromtimestamp(self.wall(), self.config.tz).date()

    def _gates(
        self,
        store: HubStore,
        black: dict[tuple[str, str], list[str]],
        only: set[tuple[str, str]] | None = None,
    ) -> Any:
        """The gates' rows as the page shows them (every gate's, or those in ``only``),
        what needs the duty officer first."""
        now = self.wall()
        latest = latest_versions(store)
        if only is None:
            rows = store.gate_rows()
            alarms = store.open_alarms()
        else:
            rows, alarms = [], {}
            for site, gate in sorted(only):
                row = store.gate_row(site, gate)
                if row is not None:
                    rows.append(row)
                    alarms.update(store.open_alarms(site, gate))
        out = []
        for row in rows:
            key = (row["site"], row["gate"])
            out.append(self._shown_gate(row, now, latest, black.get(key), alarms.get(key, 0)))
        out.sort(key=lambda g: (g["rank"], g["site"], g["gate"]))
        return out

    def _shown_gate(
        self,
        row: dict[str, Any],
        now: float,
        latest: dict[str, int],
        black: list[str] | None,
        alarms: int,
    ) -> dict[str, Any]:
        online = is_online(row, now, self.config.hub.offline_after_s)
        version = _int(row.get("registry_version"))
        site_latest = latest.get(row["site"])
        behind = site_latest is not None and (version is None or version < site_latest)
        attention = []
        if row["conflicts"]:  # a ledger begun again from 1, or a forgery
            attention.append("conflicts")
        if not online:
            attention.append("offline")
        if black is not None:
            attention.append("black")
        if row["missing"]:
            attention.append("missing")
        if alarms:
            attention.append("alarms")
        if behind:
            attention.append("behind")
        if row.get("clock_synced") is False:
            attention.append("clock")
        devices = _devices(row.get("status"))
        if any(not d["ok"] for d in devices.values()):
            attention.append("devices")
        order = ("conflicts", "offline", "black", "missing", "alarms", "devices", "behind", "clock")
        rank = min((order.index(a) for a in attention), default=len(order))
        seen = row.get("last_seen")
        return {
            "site": row["site"],
            "gate": row["gate"],
            "online": online,
            "state": _text(row.get("state"), 16),
            "last_seen": iso_utc(seen) if seen else None,
            "last_seen_age_s": round(now - seen, 1) if seen else None,
            "mode": _text(row.get("mode"), 16),
            "devices": devices,
            "backlog": _int(row.get("backlog")),
            "boot": row.get("boot"),
            "boots": row.get("boots"),
            "registry_version": version,
            "latest_version": site_latest,
            "behind": behind,
            "received": row["received"],
            "duplicates": row["duplicates"],
            "conflicts": row["conflicts"],
            "through": row["through"],
            "highest": row["highest"],
            "missing": row["missing"],
            "purged": row["purged"],
            "last_event_ts": row.get("last_event_ts"),
            "last_event_kind": row.get("last_event_kind"),
            "clock_synced": row.get("clock_synced"),
            "skew_s": None if row.get("skew_s") is None else round(float(row["skew_s"]), 1),
            "alarms": alarms,
            "black": black,
            "attention": attention,
            "rank": rank,
        }

    # -- from the ingest (on the loop) ------------------------------------------------

    def _on_notify(self, kind: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            return
        key = (str(data.get("site")), str(data.get("gate")))
        if kind == "alarm":
            self.broadcast("alarm", shown_alarm(data))
        elif kind != "gate":
            log.warning("fleet page: notified of an unknown kind %r", kind[:32])
            return
        if not self._dirty:
            self.loop.call_later(GATE_BATCH_S, lambda: self._spawn(self._send_gates()))
        self._dirty.add(key)

    async def _send_gates(self) -> None:
        dirty, self._dirty = self._dirty, set()
        if not self.clients:
            return  # the last page closed meanwhile
        try:
            black = await self._black_list()
            rows, alarms = await self.read(
                lambda s: (self._gates(s, black, dirty), self._unacked(s))
            )
        except Exception as exc:  # the store is busy or gone: the next change retries
            log.warning("fleet page: gates not read back: %s", exc)
            return
        for row in rows:
            self.broadcast("gate", row)
        # All the open alarms again: one the gate's own guard acknowledged (its ``ack``
        # event just came) leaves the page with it.
        self.broadcast("alarms", alarms)

    def broadcast(self, kind: str, data: Any) -> None:
        """Send one message to every live page; a page too slow is dropped."""
        message = (kind, json.dumps(data, ensure_ascii=False))
        for q in list(self.clients):
            try:
                q.put_nowait(message)
            except asyncio.QueueFull:
                self.clients.discard(q)
                log.warning("fleet page: dropped a page that did not keep up")

    # -- middleware -------------------------------------------------------------------

    def login_needed(self, request: web.Request) -> bool:
        """Whether ``request`` comes from off this machine (then it needs an operator)."""
        return not is_loopback(request.remote or "")

    @web.middleware
    async def _admit(self, request: web.Request, handler: Any) -> web.StreamResponse:
        name = host_name(request.headers.get("Host", ""))
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        local = str(sock[0]) if sock else self.host
        if name is None or not host_allowed(name, local, self.host_names):
            log.warning("fleet page: refused a request for another host name")
            return _error(421, "this host name is not served here: add it to [web] host_names")
        path = request.path
        if (
            path not in OPEN_PATHS
            and not path.startswith("/static/")
            and self.login_needed(request)
            and self.auth.session(request.cookies.get(COOKIE)) is None
        ):
            return _error(401, "log in first")
        response: web.StreamResponse = await handler(request)
        return response

    # -- pages ------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        html = _static("index.html").decode().replace("{{LANG}}", self.config.web.language)
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(
            body=_static(name), content_type=_TYPES[name.rsplit(".", 1)[1]], charset="utf-8"
        )

    async def session_info(self, request: web.Request) -> web.Response:
        """``GET /api/session``: whether this client needs a login, and who is logged in."""
        s = self.auth.session(request.cookies.get(COOKIE))
        return web.json_response(
            {
                "hub": self.config.hub.id,
                "version": __version__,
                "language": self.config.web.language,
                "login": self.auth.enabled,
                "login_needed": self.login_needed(request),
                "me": {"operator": s.guard, "csrf": s.csrf} if s else None,
                "black_below": self.config.hub.black_below,
                "today": self.today().isoformat(),
                "timezone": self.config.report.timezone,
            }
        )

    async def _read(self, fn: Callable[[HubStore], Any], own_thread: bool = False) -> Any:
        try:
            return await (self.report(fn) if own_thread else self.read(fn))
        except TimeoutError:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "the store did not answer in time"}),
                content_type="application/json",
            ) from None

    async def api_gates(self, request: web.Request) -> web.Response:
        """``GET /api/gates``: every gate, what needs the duty officer first."""
        black = await self._black_list()
        return web.json_response(await self._read(lambda s: self._gates(s, black)))

    async def api_alarms(self, request: web.Request) -> web.Response:
        """``GET /api/alarms``: the fleet's unacknowledged alarms, newest first, masked."""
        return web.json_response(await self._read(self._unacked))

    def _day(self, request: web.Request) -> date:
        given = request.query.get("date")
        if not given:
            return self.today()
        try:
            return date.fromisoformat(given)
        except ValueError:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "date: YYYY-MM-DD"}), content_type="application/json"
            ) from None

    async def api_report(self, request: web.Request) -> web.Response:
        """``GET /api/report/daily?date=&site=``: the ``hub report daily`` json."""
        day = self._day(request)
        site = request.query.get("site") or None
        now = self.wall()
        report = await self._read(
            lambda s: reports.daily(s, self.config, day, site, now=now), own_thread=True
        )
        return web.json_response(_masked_report(report))

    async def api_compliance(self, request: web.Request) -> web.Response:
        """``GET /api/compliance?days=14``: each gate's share checked, day by day."""
        try:
            days = int(request.query.get("days") or 14)
        except ValueError:
            days = 0
        if not 1 <= days <= MAX_DAYS:
            return _error(400, f"days: 1 to {MAX_DAYS}")
        end = self._day(request)
        history = await self._read(
            lambda s: reports.compliance_history(s, self.config, end, days), own_thread=True
        )
        return web.json_response(history)

    async def api_events(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/events``: ``hello`` (gates and alarms), then ``gate``, ``alarm``,
        ``ack`` and ``alarms`` (every open one) as they happen; 503 past ``MAX_CLIENTS``.
        A stream that needed a login ends when its session does (logout or expiry)."""
        if self.streams >= MAX_CLIENTS:
            self.refused.labels("clients").inc()
            self._warn_refused(f"{self.streams} live pages already")
            return web.json_response(
                {"error": "too many live pages: try again"},
                status=503,
                headers={"Retry-After": "5"},
            )
        self.streams += 1
        try:
            return await self._stream(request)
        finally:
            self.streams -= 1

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        q: asyncio.Queue[Message] = asyncio.Queue(CLIENT_QUEUE)
        response: web.StreamResponse | None = None
        sid = request.cookies.get(COOKIE) if self.login_needed(request) else None

        def logged_out() -> bool:
            return sid is not None and self.auth.session(sid) is None

        try:
            async with sse_response(request, sep="\n", ping_interval=HEARTBEAT_S) as sse:
                response = sse
                await sse.write(b"retry: 2000\n\n")
                self.clients.add(q)  # before the read: nothing after it is lost
                self.clients_gauge.set(len(self.clients))
                black = await self._black_list()
                hello = await self._read(
                    lambda s: {"gates": self._gates(s, black), "alarms": self._unacked(s)}
                )
                await sse.send(json.dumps(hello, ensure_ascii=False), event="hello")
                while sse.is_connected() and not logged_out():
                    try:
                        message = await asyncio.wait_for(q.get(), GONE_CHECK_S)
                    except TimeoutError:
                        if request.transport is None or request.transport.is_closing():
                            break
                        continue
                    if message is None or q not in self.clients or logged_out():
                        break
                    kind, data = message
                    await sse.send(data, event=kind)
        except (ConnectionResetError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(q)
            self.clients_gauge.set(len(self.clients))
        return response if response is not None else web.StreamResponse()

    # -- operators --------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        """``POST /api/login {"operator", "pin"}``: a session cookie and its CSRF token."""
        data = await json_body(request, "fleet page")
        if isinstance(data, web.Response):
            return data
        try:
            body = LoginBody.model_validate(data)
        except ValidationError as exc:
            return _error(400, LoginBody.message(exc, {}))
        if not self.auth.enabled:
            return _error(403, "operator login is not set up ([web] operators)")
        s = await check_pin(
            self.auth,
            body.operator,
            body.pin,
            request.remote or "?",
            self.logins,
            "fleet page",
            "operator",
            "this machine",
        )
        if isinstance(s, web.Response):
            return s
        log.info("fleet page: operator %s logged in", body.operator)
        response = web.json_response({"ok": True, "operator": s.guard, "csrf": s.csrf})
        response.set_cookie(
            COOKIE,
            s.sid,
            max_age=int(SESSION_S),
            httponly=True,
            samesite="Strict",
            secure=self.tls is not None,
            path="/",
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        data = await json_body(request, "fleet page")
        if isinstance(data, web.Response):
            return data
        s = csrf_session(self.auth, request, COOKIE)
        if isinstance(s, web.Response):
            return s
        self.auth.end(s.sid)
        log.info("fleet page: operator %s logged out", s.guard)
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def ack(self, request: web.Request) -> web.Response:
        """``POST /api/alarms/ack {"site", "gate", "seq"}``: the alarm leaves every page;
        kept in the store (``hub_alarm_acks``) with the operator's name."""
        data = await json_body(request, "fleet page")
        if isinstance(data, web.Response):
            return data
        by = "local"
        if self.auth.enabled:
            s = csrf_session(self.auth, request, COOKIE)
            if isinstance(s, web.Response):
                return s
            by = s.guard
        try:
            body = AckBody.model_validate(data)
        except ValidationError as exc:
            return _error(400, AckBody.message(exc, {}))
        at = self.wall()

        def write(store: HubStore) -> bool:
            store.begin()
            try:
                done = store.ack_alarm(body.site, body.gate, body.seq, by, at)
            except BaseException:
                store.rollback()
                raise
            store.commit()
            return done

        if not await self._read(write):
            return _error(404, "no such alarm")
        log.info("fleet page: an alarm of %s/%s acknowledged by %s", body.site, body.gate, by)
        self.broadcast("ack", {"site": body.site, "gate": body.gate, "seq": body.seq, "by": by})
        self._on_notify("gate", {"site": body.site, "gate": body.gate})
        return web.json_response({"ok": True, "by": by})

    # -- machines ---------------------------------------------------------------------

    def _figures(self, store: HubStore, black: dict[tuple[str, str], list[str]]) -> dict[str, Any]:
        gates = self._gates(store, black)
        return {
            "gates": gates,
            "gates_total": len(gates),
            "gates_online": sum(1 for g in gates if g["online"]),
            "events": store.counts()["hub_events"],
        }

    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text format."""
        counts, refused = self.stats.snapshot()
        data: dict[str, Any] = {"counts": counts, "refused": refused}
        data["connected"] = self.stats.connected
        last = self.stats.last_commit
        data["last_commit_age"] = math.nan if last is None else max(0.0, self.wall() - last)
        black = await self._black_list()
        data.update(await self._read(lambda s: self._figures(s, black)))
        self.fleet.data = data
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4"},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``: 200 while the broker is connected and the store answers."""
        started = time.perf_counter()
        problems = []
        try:
            await self.read(
                lambda s: s.conn.execute("SELECT count(*) FROM hub_gates").fetchone(),
                HEALTH_TIMEOUT_S,
            )
        except TimeoutError:
            problems.append(f"store: no answer within {HEALTH_TIMEOUT_S:g} s")
        except Exception as exc:
            problems.append(f"store: {type(exc).__name__}: {str(exc)[:200]}")
        if not self.stats.connected:
            problems.append("broker not connected")
        last = self.stats.last_commit
        body: dict[str, Any] = {
            "ok": not problems,
            "hub": self.config.hub.id,
            "broker": bool(self.stats.connected),
            "last_commit_age_s": None if last is None else round(self.wall() - last, 1),
            "store_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        if problems:
            body["error"] = "; ".join(problems)
        return web.json_response(body, status=200 if not problems else 503)


def _cards_masked(items: Any) -> list[Any]:
    """A list of card entries with each ``card`` cut to its last four characters."""
    from gated.privacy import mask_uid

    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("card"), str):
            item = dict(item, card=mask_uid(item["card"]))
        out.append(item)
    return out


def _masked_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report as a browser may see it: every card uid cut to its last four (the
    report masks them already; a uid never reaches a browser whole, whatever it holds)."""
    out = dict(report)
    for key in ("unregistered_cards", "first_used_cards"):
        if key in out:
            out[key] = _cards_masked(out[key])
    gates = []
    for g in report.get("gates") or []:
        g = dict(g)
        for key in ("unknown_cards", "first_used_cards"):
            if key in g:
                g[key] = _cards_masked(g[key])
        gates.append(g)
    out["gates"] = gates
    return out
