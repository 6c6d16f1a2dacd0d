"""The guard's actions on the status screen: login, logout, decide, open once, mode, ack.

Every action but login needs a session cookie (401 without one) and the session's
CSRF token in ``X-CSRF-Token``; every POST must be JSON and, when the browser says
where it comes from (``Origin``, ``Sec-Fetch-Site``), come from this page (403 if
not); its body must fit its model in :mod:`gated.status.bodies` (400 if not). What
the action does and the rules that bind it are the guard desk's (:mod:`gated.desk`):
each runs on the controller thread through the bridge and is a ledger event carrying
the guard's id; the desk's refusals become 404 (nothing to answer), 422 (a rule) and
409 (the gate is locked).
PINs are never logged; guard ids are staff ids, not residents' data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import Counter
from pydantic import ValidationError

from gated.desk import GuardDesk
from gated.status.auth import GuardAuth, Login, hash_pin, verify_pin
from gated.status.bodies import AckBody, Body, DecideBody, LoginBody, ModeBody
from gated.status.bridge import GateBridge
from gated.status.view import screen_event

log = logging.getLogger(__name__)

COOKIE = "gated_session"
# Checked against when a guard id has no hash, so a wrong id costs the same time.
_DUMMY_HASH = hash_pin("not-a-pin", salt=b"gated-dummy-salt")

B = TypeVar("B", bound=Body)
T = TypeVar("T")


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def same_origin(request: web.Request) -> bool:
    """Whether a POST comes from this page (or from a non-browser client)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin == f"{request.scheme}://{request.host}"
    site = request.headers.get("Sec-Fetch-Site")
    return site in (None, "same-origin", "none")


async def json_body(request: web.Request, where: str) -> dict[str, Any] | web.Response:
    """The JSON object of a POST from this page, or the error response to send instead
    (403 cross-site, 415 not JSON, 400 not an object); ``where`` names the page in the log."""
    if not same_origin(request):
        log.warning("%s: refused a cross-site %s", where, request.path)
        return _error(403, "cross-site request refused")
    if request.content_type != "application/json":
        return _error(415, "send application/json")
    try:
        data = json.loads(await request.text() or "{}")
    except (ValueError, UnicodeDecodeError):
        return _error(400, "not JSON")
    if not isinstance(data, dict):
        return _error(400, "expected a JSON object")
    return data


def csrf_session(
    auth: GuardAuth, request: web.Request, cookie: str = COOKIE
) -> Login | web.Response:
    """The session of ``request``'s cookie, or 401 (none) / 403 (no valid CSRF token)."""
    s = auth.session(request.cookies.get(cookie))
    if s is None:
        return _error(401, "log in first")
    if request.headers.get("X-CSRF-Token") != s.csrf:
        return _error(403, "missing or wrong CSRF token")
    return s


async def check_pin(
    auth: GuardAuth,
    who: str,
    pin: str,
    client: str,
    logins: Counter,
    where: str,
    role: str,
    local: str = "the booth",
) -> Login | web.Response:
    """Check ``who``'s PIN from ``client`` within the lockout rules of :class:`GuardAuth`:
    the new session, or the 401 / 429 to answer. ``logins`` counts ``ok``, ``wrong`` and
    ``locked``; ``where``, ``role`` ("guard", "operator") and ``local`` (a loopback client)
    name them in the log. The PIN is never logged."""
    # The try is taken before the hash, so logins that arrive at once count at once.
    attempt = auth.reserve(who, client)
    if attempt is None:
        logins.labels("locked").inc()
        left = auth.locked(who, client)
        return _error(429, "too many wrong PINs: wait", **{"Retry-After": str(math.ceil(left))})
    stored = auth.hash_for(who)
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(None, verify_pin, pin, stored or _DUMMY_HASH)
    if not ok or not stored:
        logins.labels("wrong").inc()
        place = local if attempt.booth else "the network"
        log.warning("%s: wrong PIN for %s %s from %s", where, role, who, place)
        left = auth.locked(who, client)
        if left > 0:
            log.warning(
                "%s: PIN tries for %s %s from %s paused for %.0f s", where, role, who, place, left
            )
            return _error(429, "too many wrong PINs: wait", **{"Retry-After": str(math.ceil(left))})
        return _error(401, f"wrong {role} id or PIN")
    logins.labels("ok").inc()
    return auth.right(attempt)


class GuardActions:
    """The POST endpoints of docs/contracts.md §8 and ``/api/alarm/ack``.

    ``bridge`` leads to the desk; ``auth`` holds the logins; ``alarms`` are the screen's
    open alarms (an ack closes one at once); ``logins`` counts login results; ``refresh``
    sends the new state to every screen; ``valid_temp_c`` bounds a clinical reading;
    ``secure_cookie`` when the screen is served over HTTPS."""

    def __init__(
        self,
        bridge: GateBridge,
        auth: GuardAuth,
        alarms: dict[str, dict[str, Any]],
        logins: Counter,
        refresh: Callable[[], Awaitable[None]],
        valid_temp_c: tuple[float, float],
        secure_cookie: bool = False,
    ):
        self.bridge = bridge
        self.auth = auth
        self.alarms = alarms
        self.logins = logins
        self.refresh = refresh
        self.valid_temp_c = valid_temp_c
        self.secure_cookie = secure_cookie

    def add_routes(self, app: web.Application) -> None:
        """Register the endpoints on ``app``."""
        r = app.router
        r.add_post("/api/guard/login", self.login)
        r.add_post("/api/guard/logout", self.logout)
        r.add_post("/api/guard/decide", self.decide)
        r.add_post("/api/gate/open", self.open_once)
        r.add_post("/api/mode", self.mode)
        r.add_post("/api/alarm/ack", self.ack)

    # -- checks ---------------------------------------------------------------------------

    same_origin = staticmethod(same_origin)

    async def body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The JSON object of a POST, or the error response to send instead."""
        return await json_body(request, "status screen")

    def parse(self, model: type[B], data: dict[str, Any]) -> B | web.Response:
        """``data`` as ``model``, or the 400 that names the first field refused."""
        low, high = self.valid_temp_c
        context = {"valid_temp_c": (low, high), "low": low, "high": high}
        try:
            return model.model_validate(data, context=context)
        except ValidationError as exc:
            return _error(400, model.message(exc, context))

    def session(self, request: web.Request) -> Login | web.Response:
        """The guard's session, or 401 (none) / 403 (no valid CSRF token)."""
        return csrf_session(self.auth, request)

    async def run(self, action: Callable[[GuardDesk], T]) -> T:
        """Run ``action(desk)`` on the controller thread and await its result."""
        try:
            return await self.bridge.act(action)
        except TimeoutError:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "the gate controller did not answer"}),
                content_type="application/json",
            ) from None

    async def _guarded(self, request: web.Request) -> tuple[Login, dict[str, Any]] | web.Response:
        data = await self.body(request)
        if isinstance(data, web.Response):
            return data
        s = self.session(request)
        if isinstance(s, web.Response):
            return s
        return s, data

    async def _done(self, event: dict[str, Any]) -> web.Response:
        await self.refresh()
        return web.json_response({"ok": True, "event": screen_event(event)})

    # -- endpoints ------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        """``POST /api/guard/login {"guard", "pin"}``: a session cookie; the guard is on duty."""
        data = await self.body(request)
        if isinstance(data, web.Response):
            return data
        body = self.parse(LoginBody, data)
        if isinstance(body, web.Response):
            return body
        guard, pin = body.guard, body.pin
        if not self.auth.enabled:
            return _error(403, "guard login is not set up (status.guard_pin_hash or guards)")
        s = await check_pin(
            self.auth, guard, pin, request.remote or "?", self.logins, "status screen", "guard"
        )
        if isinstance(s, web.Response):
            return s
        await self.run(lambda desk: desk.log_in(guard))
        log.info("status screen: guard %s logged in", guard)
        await self.refresh()
        response = web.json_response({"ok": True, "guard": guard, "csrf": s.csrf})
        response.set_cookie(
            COOKIE,
            s.sid,
            max_age=int(self.auth.session_s),
            httponly=True,
            samesite="Strict",
            secure=self.secure_cookie,
            path="/",
        )
        return response

    async def off_duty(self, guard: str) -> None:
        """Record that ``guard`` went off duty (no session of theirs is left)."""
        try:
            await self.run(lambda desk: desk.guard_off(guard))
        except (TimeoutError, RuntimeError) as exc:
            log.warning("guard %s off duty not recorded: %s", guard, exc)
        await self.refresh()

    async def logout(self, request: web.Request) -> web.Response:
        """``POST /api/guard/logout``: the session ends; the guard's shift with the last one."""
        got = await self._guarded(request)
        if isinstance(got, web.Response):
            return got
        s, _ = got
        self.auth.end(s.sid)
        if not self.auth.on_duty(s.guard):
            await self.off_duty(s.guard)
        log.info("status screen: guard %s logged out", s.guard)
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def decide(self, request: web.Request) -> web.Response:
        """``POST /api/guard/decide {"event", "grant", "confirm_temp_c"}``."""
        got = await self._guarded(request)
        if isinstance(got, web.Response):
            return got
        s, data = got
        body = self.parse(DecideBody, data)
        if isinstance(body, web.Response):
            return body
        asked: str | None = None

        def answer(desk: GuardDesk) -> dict[str, Any]:
            nonlocal asked
            asked = desk.question(body.event)
            result: dict[str, Any] = desk.decide(
                body.event, body.grant, s.guard, body.confirm_temp_c
            )
            return result

        try:
            event = await self.run(answer)
        except KeyError:
            return _error(404, "no such pending decision (answered or timed out)")
        except ValueError as exc:
            return _error(422, str(exc))
        log.info(
            "status screen: guard %s answered a %s with %s",
            s.guard,
            "fever re-check" if asked == "recheck" else "pending verdict",
            event["decision"],
        )
        return await self._done(event)

    async def open_once(self, request: web.Request) -> web.Response:
        """``POST /api/gate/open``: let one person through, on the guard's word."""
        got = await self._guarded(request)
        if isinstance(got, web.Response):
            return got
        s, _ = got
        try:
            event = await self.run(lambda desk: desk.open_once(s.guard, guard=s.guard))
        except PermissionError as exc:
            return _error(409, str(exc))
        log.info("status screen: guard %s opened the gate once", s.guard)
        return await self._done(event)

    async def mode(self, request: web.Request) -> web.Response:
        """``POST /api/mode {"mode"}``: normal, locked, free or guard_only."""
        got = await self._guarded(request)
        if isinstance(got, web.Response):
            return got
        s, data = got
        body = self.parse(ModeBody, data)
        if isinstance(body, web.Response):
            return body
        mode = body.mode
        event = await self.run(lambda desk: desk.set_mode(mode, s.guard))
        log.info("status screen: guard %s set the mode to %s", s.guard, mode)
        return await self._done(event)

    async def ack(self, request: web.Request) -> web.Response:
        """``POST /api/alarm/ack {"event"}``: an ``ack`` ledger event; the alarm stops
        blinking on every screen, and stays closed after a restart."""
        data = await self.body(request)
        if isinstance(data, web.Response):
            return data
        guard = None
        if self.auth.enabled:
            s = self.session(request)
            if isinstance(s, web.Response):
                return s
            guard = s.guard
        body = self.parse(AckBody, data)
        if isinstance(body, web.Response):
            return body
        event_id = body.event
        alarms = self.alarms
        alarm = alarms.pop(event_id, None)  # at once, so a second click finds it closed
        if alarm is None:
            return _error(404, "no such open alarm")
        try:
            event = await self.run(
                lambda desk: desk.acknowledge(event_id, str(alarm.get("alarm")), guard)
            )
        except web.HTTPServiceUnavailable:
            raise  # the ack still reaches the controller; its event closes the alarm everywhere
        except BaseException:
            alarms.setdefault(event_id, alarm)  # not recorded: still open
            raise
        log.info("status screen: alarm %s acknowledged by %s", event_id[:8], guard or "the screen")
        return await self._done(event)
