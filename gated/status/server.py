"""The status screen's web server: aiohttp on a thread and event loop of its own.

The controller never waits for the screen: its observer only hands each event to
this loop with ``call_soon_threadsafe``. The screen reaches the controller only
through its bridge (:mod:`gated.status.bridge`: the desk's snapshot and actions, run
on the controller thread and awaited without blocking anything), and reads the
recent events through a read-only SQLite connection of its own.

What it lets in (docs/contracts.md §8): a ``Host`` header that names the address the client
connected to, localhost on loopback, this machine's host name or ``host_names``
(anything else is a DNS rebinding attempt: 421); at most ``max_connections`` open
connections from other machines and as many from this one, and ``max_clients`` live
streams (more get 503); and when ``listen`` is not loopback, ``/api/state``,
``/api/events`` and ``/metrics`` only for a guard's session or the kiosk token
(``Authorization: Bearer``, or once ``/?kiosk=TOKEN`` in a browser, which then
keeps a cookie). With ``tls_cert_file`` it serves HTTPS and its cookies are Secure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp_sse import sse_response

from gated import __version__
from gated.clock import iso_utc
from gated.status.actions import GuardActions
from gated.status.auth import (
    GuardAuth,
    is_loopback,
    kiosk_cookie,
    read_kiosk_token,
    same_secret,
)
from gated.status.bridge import SNAPSHOT_TIMEOUT_S, GateBridge
from gated.status.limits import ConnectionLimit, LoopErrors, host_allowed, host_name
from gated.status.metrics import GateMetrics
from gated.status.view import ScreenHistory, screen_event

if TYPE_CHECKING:
    from gated.config import Config
    from gated.controller import Controller

log = logging.getLogger(__name__)

#: How long a snapshot answers ``GET /api/state`` and ``/metrics`` while no event came.
SNAPSHOT_MAX_AGE_S = 0.5
#: Seconds between the ``: ping`` comments on a live stream (aiohttp-sse writes them).
HEARTBEAT_S = 10.0
CLIENT_QUEUE = 500
KIOSK_COOKIE = "gated_kiosk"
#: Seconds between checks that a live screen's connection is still open.
GONE_CHECK_S = 1.0
#: The paths that show the gate's people and state: a session beyond loopback.
READS = ("/api/state", "/api/events", "/metrics")
#: File descriptors the daemon needs besides the screen's connections.
FD_HEADROOM = 128
#: What waits in a live screen's queue: the event's name and its JSON data; None ends it.
Message = tuple[str, str] | None
STATIC = ("app.js", "style.css", "i18n.js")
_TYPES = {"js": "text/javascript", "css": "text/css", "html": "text/html"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def secure_headers(headers: Any) -> None:
    """The headers every answer of a page gated serves carries (CSP: nothing from elsewhere)."""
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def with_secure_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    """Middleware: :func:`secure_headers` on every answer, an error's included."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        secure_headers(exc.headers)
        raise
    if not response.prepared:
        secure_headers(response.headers)
    return response


def _static(name: str) -> bytes:
    return resources.files("gated.status").joinpath("static", name).read_bytes()


class StatusServer:
    """The guard's screen and its API (docs/contracts.md §8) for one gate; a service of the App."""

    def __init__(
        self,
        config: Config,
        controller: Controller,
        boot: int,
        device_names: list[str],
        broker_connected: Callable[[], bool | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        mqtt_refusals: Callable[[], Mapping[str, int]] = dict,
    ):
        status = config.status
        self.config = config
        self.bridge = GateBridge(controller)
        self.host, _, port = status.listen.rpartition(":")
        self.host = self.host.strip("[]")
        self.port = int(port)
        self.device_names = device_names
        self.db_path = Path(config.storage.path)
        self._broker = broker_connected or (lambda: None)
        self.auth = GuardAuth(
            status.guard_pin_hash,
            dict(status.guards),
            lockout_after=status.lockout_after,
            lockout_gate_after=status.lockout_gate_after,
            lockout_s=status.lockout_s,
            session_s=status.session_h * 3600,
            clock=clock,
        )
        if not is_loopback(self.host) and not self.auth.enabled:
            raise ValueError("the status screen listens beyond loopback only with a guard PIN")
        self.reads_need_session = not is_loopback(self.host)
        self.kiosk_token = (
            read_kiosk_token(status.kiosk_token_file) if status.kiosk_token_file else ""
        )
        me = socket.gethostname().lower().rstrip(".")
        self.host_names = {*status.host_names, me, f"{me}.local"}
        self.tls: ssl.SSLContext | None = None
        if status.tls_cert_file is not None and status.tls_key_file is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(status.tls_cert_file, status.tls_key_file)
        self.streams = 0
        self._listener: asyncio.base_events.Server | None = None
        self.history = ScreenHistory(ZoneInfo(config.gate.timezone), boot)
        self.metrics = GateMetrics(self._backlog, self._broker_state, mqtt_refusals)
        self.loop = asyncio.new_event_loop()
        self.clients: set[asyncio.Queue[Message]] = set()
        self.snap: dict[str, Any] = {}
        self.snapshot_max_age_s = SNAPSHOT_MAX_AGE_S
        self._snap_at = -1e9
        self._events_seen = 0
        self._snap_seen = -1
        self._wait_seen = -1
        self._snap_wait: asyncio.Future[dict[str, Any]] | None = None
        self.actions = GuardActions(
            self.bridge,
            self.auth,
            self.history.alarms,
            self.metrics.logins,
            self.refresh,
            config.policy.valid_temp_c,
            secure_cookie=self.tls is not None,
        )
        self._refresh_due = False
        self._refreshing = False
        self._dirty = False
        self._warned = -1e9
        self._refusal_logged = -1e9
        self._conn: sqlite3.Connection | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.url = ""
        self.bridge.watch(self._observe, self._state_changed)

    # -- lifecycle (any thread) -------------------------------------------------------

    def start(self) -> None:
        """Serve on a thread of its own; a port that cannot be had is logged, not fatal."""
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._startup())
        except (OSError, sqlite3.Error, ssl.SSLError) as exc:
            log.error("status screen not started on %s:%d: %s", self.host, self.port, exc)
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
        """Close the streams and the listening socket; safe to call twice."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # the loop is already closed
            return
        thread.join(timeout=10)

    async def _startup(self) -> None:
        self._conn = sqlite3.connect(
            f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False
        )
        self._conn.execute("PRAGMA busy_timeout=2000")
        self.history.load(self._conn, datetime.now(UTC))
        self.loop.set_exception_handler(LoopErrors(time.monotonic))
        app = web.Application(
            middlewares=[with_secure_headers, self._admit], client_max_size=16 * 1024
        )
        app.router.add_get("/", self.page)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/events", self.events)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/healthz", self.healthz)
        self.actions.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        limit = self.config.status.max_connections
        self._check_fd_limit(limit)
        server = self._runner.server
        assert server is not None  # set up above
        factory = ConnectionLimit(server, limit, self._refused_connection)
        self._listener = await self.loop.create_server(
            factory, self.host, self.port, reuse_address=True, ssl=self.tls, backlog=128
        )
        scheme = "https" if self.tls else "http"
        self.url = (
            f"{scheme}://{self.host if ':' not in self.host else f'[{self.host}]'}:{self.port}"
        )
        # The controller loop starts after the services: its first state comes soon.
        self.schedule_refresh()
        self._spawn(self._housekeeping())
        log.info("status screen on %s", self.url)

    async def _shutdown(self) -> None:
        for q in list(self.clients):
            q.put_nowait(None)
        for task in list(self._tasks):
            task.cancel()
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._conn is not None:
            self._conn.close()

    @staticmethod
    def _check_fd_limit(limit: int) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < 2 * limit + FD_HEADROOM:
            log.warning(
                "status screen: %d open files allowed (LimitNOFILE), %d needed for "
                "max_connections = %d: lower max_connections or raise LimitNOFILE",
                soft,
                2 * limit + FD_HEADROOM,
                limit,
            )

    def _refused_connection(self) -> None:
        self.metrics.refused.labels("connections").inc()
        now = time.monotonic()
        if now - self._refusal_logged > 60:
            self._refusal_logged = now
            log.warning(
                "status screen: too many open connections (max_connections = %d): "
                "answering 503 (logged once a minute; gated_status_refused_total counts)",
                self.config.status.max_connections,
            )

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- from the controller thread ---------------------------------------------------

    def _observe(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the screen is stopped; the gate goes on
            self.loop.call_soon_threadsafe(self._on_event, event)

    def _state_changed(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._on_state_changed)

    # -- on the server loop ------------------------------------------------------------

    def _on_state_changed(self) -> None:
        self._events_seen += 1  # no cached snapshot: the state moved on without an event
        self.schedule_refresh()

    def _on_event(self, event: dict[str, Any]) -> None:
        shown = self.history.add(event)
        if shown is None:
            return
        self._events_seen += 1  # the controller's state has moved on: no cached snapshot
        self.metrics.event(event)
        self.broadcast("event", shown)
        if event.get("kind") == "ack":
            self.broadcast("ack", {"event": event.get("ref"), "by": event.get("guard")})
        self.schedule_refresh()

    def schedule_refresh(self) -> None:
        """Refresh the controller state soon; many events in a burst make one refresh."""
        if not self._refresh_due:
            self._refresh_due = True
            self.loop.call_later(0.05, lambda: self._spawn(self.refresh()))

    async def snapshot(self) -> dict[str, Any]:
        """The controller's snapshot, awaited without blocking the loop."""
        asked, seen = time.monotonic(), self._events_seen
        snap = await self.bridge.snapshot(SNAPSHOT_TIMEOUT_S)
        # Reusable while no event comes; one that came meanwhile may or may not be in it.
        self.snap, self._snap_at, self._snap_seen = snap, asked, seen
        return snap

    async def recent_snapshot(self) -> dict[str, Any]:
        """A snapshot at most ``snapshot_max_age_s`` old with no event since it was asked
        for; screens and scrapers asking at once share one request to the controller."""
        if (
            time.monotonic() - self._snap_at < self.snapshot_max_age_s
            and self._events_seen == self._snap_seen
        ):
            return self.snap
        wait = self._snap_wait
        if wait is None or wait.done() or self._wait_seen != self._events_seen:
            wait = self._snap_wait = asyncio.ensure_future(self.snapshot())
            self._wait_seen = self._events_seen
        return await asyncio.shield(wait)

    async def refresh(self) -> None:
        """Take a fresh snapshot and send the new state to every screen.

        One snapshot at a time: what changes while one is asked for is picked up by one
        more, so a burst of events never queues a pile of snapshots on the controller."""
        self._refresh_due = False
        if self._refreshing:
            self._dirty = True
            return
        self._refreshing = True
        try:
            self._dirty = True
            while self._dirty:
                self._dirty = False
                try:
                    await self.snapshot()
                except (TimeoutError, RuntimeError):
                    now = time.monotonic()
                    if now - self._warned > 60:
                        self._warned = now
                        log.warning("status screen: the controller is slow to give its state")
                    return
                self.metrics.snapshot(self.snap, self.devices())
                self.broadcast("state", self.view(full=False))
        finally:
            self._refreshing = False

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for s in self.auth.expired():
                log.info("guard %s: login expired", s.guard)
                if not self.auth.on_duty(s.guard):
                    await self.actions.off_duty(s.guard)
            if self.snap.get("pending") or self.snap.get("fever_checks"):
                await self.refresh()

    def devices(self) -> dict[str, dict[str, Any]]:
        """Every configured device's health (no report yet counts as working)."""
        reported = self.snap.get("devices") or {}
        out = {n: {"ok": True, "detail": ""} for n in self.device_names}
        out.update(reported)
        return out

    def _backlog(self) -> float:
        if self._conn is None:
            return float("nan")
        try:
            return float(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error:
            return float("nan")

    def _broker_state(self) -> bool | None:
        try:
            return self._broker()
        except Exception:  # a probe that fails means "unknown"
            return None

    def view(self, full: bool) -> dict[str, Any]:
        """The state the page renders (``full``: with the last events)."""
        snap = self.snap
        policy = self.config.policy
        left = snap.get("pending_left_s") or {}
        current = snap.get("last_verdict")
        out: dict[str, Any] = {
            "gate": {
                "id": self.config.gate.id,
                "site": self.config.gate.site,
                "direction": self.config.gate.direction,
            },
            "version": __version__,
            "boot": self.history.boot,
            "language": self.config.status.language,
            "now": iso_utc(time.time()),
            "mode": snap.get("mode"),
            "fire": bool(snap.get("fire")),
            "clock_synced": snap.get("clock_synced", True),
            "guards_on_duty": snap.get("guards_on_duty") or [],
            "pending": [
                dict(screen_event(e), left_s=round(float(left.get(e["id"], 0)), 1))
                for e in snap.get("pending") or []
            ]
            + [
                # A fever denial a guard may still re-check with a clinical reading.
                dict(screen_event(e), left_s=round(float(left.get(e["id"], 0)), 1), recheck=True)
                for e in snap.get("fever_checks") or []
            ],
            "devices": self.devices(),
            "peers": snap.get("peers") or {},
            "registry_version": snap.get("registry_version"),
            "broker": {
                "configured": bool(self.config.mqtt.urls),
                "connected": self._broker_state(),
                "backlog": int(b) if (b := self._backlog()) == b else None,
            },
            "current": screen_event(current) if current else None,
            "today": self.history.counts(datetime.now(UTC)),
            "alarms": list(self.history.alarms.values()),
            "fever_c": policy.fever_c,
            "valid_temp_c": list(policy.valid_temp_c),
            "login": self.auth.enabled,
            "seq": self.history.last_seq,
        }
        if full:
            out["events"] = list(reversed(self.history.recent))
        return out

    def broadcast(self, kind: str, data: Any) -> None:
        """Send one message to every connected screen; a screen too slow is dropped."""
        message = (kind, json.dumps(data, ensure_ascii=False))
        for q in list(self.clients):
            self._put(q, message)

    def _put(self, q: asyncio.Queue[Message], message: Message) -> None:
        try:
            q.put_nowait(message)
        except asyncio.QueueFull:
            self.clients.discard(q)
            log.warning("status screen: dropped a client that did not keep up")

    # -- middleware and pages ------------------------------------------------------------

    def reader(self, request: web.Request) -> bool:
        """Whether ``request`` may read the screen: a guard's session or the kiosk token
        (as a bearer token or the kiosk cookie); anybody while ``listen`` is loopback."""
        if not self.reads_need_session:
            return True
        if self.auth.session(request.cookies.get("gated_session")) is not None:
            return True
        token = self.kiosk_token
        if not token:
            return False
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and same_secret(given.strip(), token):
            return True
        return same_secret(request.cookies.get(KIOSK_COOKIE), kiosk_cookie(token))

    @web.middleware
    async def _admit(self, request: web.Request, handler: Any) -> web.StreamResponse:
        name = host_name(request.headers.get("Host", ""))
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        local = str(sock[0]) if sock else self.host
        if name is None or not host_allowed(name, local, self.host_names):
            log.warning("status screen: refused a request for another host name")
            return web.json_response(
                {"error": "this host name is not served here: add it to [status] host_names"},
                status=421,
            )
        if request.path in READS and not self.reader(request):
            return web.json_response(
                {"error": "log in first (or send the kiosk token)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="gated"'},
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def page(self, request: web.Request) -> web.Response:
        """``GET /``: the screen; ``/?kiosk=TOKEN`` leaves the kiosk cookie and goes to ``/``."""
        given = request.query.get("kiosk")
        if given is not None:
            if not same_secret(given, self.kiosk_token):
                log.warning("status screen: a wrong kiosk token")
                return web.json_response({"error": "wrong kiosk token"}, status=401)
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(
                KIOSK_COOKIE,
                kiosk_cookie(self.kiosk_token),
                max_age=400 * 86400,  # as long as a browser keeps a cookie
                httponly=True,
                samesite="Strict",
                secure=self.tls is not None,
                path="/",
            )
            return response
        html = _static("index.html").decode().replace("{{LANG}}", self.config.status.language)
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.Response:
        """``GET /static/{name}``: the page's script and style (package data)."""
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(
            body=_static(name), content_type=_TYPES[name.rsplit(".", 1)[1]], charset="utf-8"
        )

    async def state(self, request: web.Request) -> web.Response:
        """``GET /api/state``: everything the page shows, and who is logged in here."""
        with contextlib.suppress(TimeoutError, RuntimeError):
            await self.recent_snapshot()
        out = self.view(full=True)
        s = self.auth.session(request.cookies.get("gated_session"))
        out["me"] = {"guard": s.guard, "csrf": s.csrf} if s else None
        return web.json_response(out)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/events``: server-sent events, a full state first; 503 past
        ``max_clients`` streams."""
        if self.streams >= self.config.status.max_clients:
            self.metrics.refused.labels("clients").inc()
            now = time.monotonic()
            if now - self._refusal_logged > 60:
                self._refusal_logged = now
                log.warning(
                    "status screen: %d live screens already (max_clients): answering 503",
                    self.streams,
                )
            return web.json_response(
                {"error": "too many live screens: try again"},
                status=503,
                headers={"Retry-After": "5"},
            )
        self.streams += 1
        try:
            return await self._stream(request)
        finally:
            self.streams -= 1

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        # aiohttp-sse frames the messages and writes the pings; a screen that stops
        # reading for its send_timeout (120 s) is cut off.
        q: asyncio.Queue[Message] = asyncio.Queue(CLIENT_QUEUE)
        response: web.StreamResponse | None = None
        try:
            async with sse_response(request, sep="\n", ping_interval=HEARTBEAT_S) as sse:
                response = sse
                # The reconnection delay opens the stream, before the first state (the
                # library writes ``retry`` after a message's data).
                await sse.write(b"retry: 2000\n\n")
                await sse.send(json.dumps(self.view(full=True), ensure_ascii=False), event="hello")
                self.clients.add(q)
                self.metrics.sse_clients.set(len(self.clients))
                while sse.is_connected():
                    try:
                        message = await asyncio.wait_for(q.get(), GONE_CHECK_S)
                    except TimeoutError:
                        # A screen that closed its end frees its place within a second, not
                        # at the next ping that fails to be written.
                        if request.transport is None or request.transport.is_closing():
                            break
                        continue
                    if message is None or q not in self.clients:
                        break
                    kind, data = message
                    await sse.send(data, event=kind)
        except (ConnectionResetError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(q)
            self.metrics.sse_clients.set(len(self.clients))
        return response if response is not None else web.StreamResponse()

    async def metrics_page(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text format."""
        try:
            await self.recent_snapshot()
            self.metrics.snapshot(self.snap, self.devices())
        except (TimeoutError, RuntimeError):
            pass
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``: 200 while the controller answers and events can be
        committed, else 503."""
        started = time.perf_counter()
        try:
            snap = await self.snapshot()
        except (TimeoutError, RuntimeError):
            return web.json_response({"ok": False, "error": "controller not answering"}, status=503)
        storage = (snap.get("devices") or {}).get("storage") or {}
        ok = storage.get("ok") is not False
        return web.json_response(
            {
                "ok": ok,
                **({} if ok else {"error": f"storage: {storage.get('detail')}"}),
                "boot": self.history.boot,
                "seq": self.history.last_seq,
                "mode": snap.get("mode"),
                "controller_ms": round((time.perf_counter() - started) * 1000, 2),
            },
            status=200 if ok else 503,
        )
