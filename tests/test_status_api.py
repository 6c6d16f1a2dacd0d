"""The status screen's API over real HTTP, against a gate running in-process on sim drivers.

Readings go into the controller's queue exactly as a driver's ``emit`` puts them; the
ledger is read back through a connection of the test's own.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gated.app import App
from tests.support.mosquitto import free_port
from tests.support.rig import make_config
from tests.support.status_gate import PIN_G01, SHARED_PIN, Gate
from tests.support.waiting import wait_until


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.stop()


def pending_id(gate: Gate) -> str:
    """Wait for a pending guard decision on the screen; its event id."""
    state = wait_until(lambda: (s := gate.state())["pending"] and s, what="a pending decision")
    return str(state["pending"][0]["id"])


# ---- reading the screen -------------------------------------------------------------------


def test_page_and_static_files_are_served_with_no_external_asset(gate: Gate) -> None:
    status, headers, body = gate.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    page = body.decode()
    assert 'lang="zh-CN"' in page
    for name in ("app.js", "style.css", "i18n.js"):
        assert f"/static/{name}" in page
        status, _, asset = gate.get(f"/static/{name}")
        assert status == 200 and asset
        assert b"http://" not in asset and b"https://" not in asset
    assert "http" not in page.replace("http-equiv", "")
    assert gate.get("/static/../server.py")[0] == 404
    assert gate.get("/static/nope.js")[0] == 404


def test_state_shows_the_verdict_masked_and_counts_the_day(gate: Gate) -> None:
    gate.arrive(36.5, "0A1B2C3D4E")
    gate.put("passage")
    gate.wait_event(lambda e: e["kind"] == "passage", "the passage")
    state = wait_until(lambda: (s := gate.state())["today"]["in"] == 1 and s, what="counts")
    current = state["current"]
    assert current["decision"] == "granted" and current["temperature_c"] == 36.5
    assert current["person"]["name"] == "Z**** W**"
    assert current["credential"]["color"] == "green"
    text = json.dumps(state)
    assert "Zhang Wei" not in text and "320623199001011234" not in text
    assert "0A1B2C3D4E" not in text and "******3D4E" in text
    assert [e["kind"] for e in state["events"][:2]] == ["passage", "decision"]
    assert set(state["devices"]) >= {"turnstile", "card", "thermometer"}
    # No broker configured: nothing waits for one.
    assert state["broker"] == {"configured": False, "connected": None, "backlog": 0}
    assert state["me"] is None and state["login"] is True


def test_healthz_and_metrics(gate: Gate) -> None:
    gate.arrive(38.2, None)
    gate.put("temp", 38.1)
    gate.put("card", "0A1B2C3D4E")
    gate.wait_event(lambda e: e.get("alarm") == "fever", "the fever alarm")
    status, _, body = gate.get("/healthz")
    assert status == 200 and json.loads(body)["ok"] is True

    def scraped() -> str | None:
        text = gate.get("/metrics")[2].decode()
        return text if 'gated_alarms_total{alarm="fever"} 1.0' in text else None

    text = wait_until(scraped, what="the fever in the metrics")
    for line in (
        'gated_sessions_total{decision="denied"} 1.0',
        'gated_session_reasons_total{decision="denied",reason="fever"} 1.0',
        "gated_decide_latency_seconds_count 1.0",
        'gated_temperature_celsius_bucket{le="38.5"} 1.0',
        "gated_outbox_backlog 0.0",  # no broker configured: no outbox
        'gated_device_up{device="turnstile"} 1.0',
        "gated_broker_connected NaN",
    ):
        assert line in text, line


def test_live_stream_sends_the_state_then_each_event(gate: Gate) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gate.port, timeout=20)
    conn.request("GET", "/api/events")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    seen: list[tuple[str, Any]] = []

    def read_message() -> tuple[str, Any]:
        kind, data = "", ""
        while True:
            line = r.fp.readline().decode().rstrip("\n")
            if not line:
                if kind:
                    return kind, json.loads(data)
                continue
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]

    seen.append(read_message())
    assert seen[0][0] == "hello" and "events" in seen[0][1]
    gate.arrive(36.6, "1122334455")
    while not any(k == "event" and d.get("decision") == "needs_guard" for k, d in seen):
        seen.append(read_message())
    while not any(k == "state" and d["pending"] for k, d in seen):
        seen.append(read_message())
    conn.close()


def test_broker_health_comes_from_the_publisher(tmp_path: Path) -> None:
    from tests.support.mosquitto import Mosquitto

    broker = Mosquitto(tmp_path).start()
    gate = Gate(tmp_path, mqtt={"urls": [broker.url]})
    try:
        wait_until(lambda: gate.state()["broker"]["connected"] is True, what="connected")
        assert "gated_broker_connected 1.0" in gate.get("/metrics")[2].decode()
        broker.stop()
        state = wait_until(
            lambda: (s := gate.state())["broker"]["connected"] is False and s,
            what="the broker seen gone",
        )
        assert state["broker"]["configured"] is True
    finally:
        gate.stop()
        broker.stop()


# ---- guard actions ----------------------------------------------------------------------------


def test_actions_need_a_session_a_token_and_the_same_origin(gate: Gate) -> None:
    for path, body in (
        ("/api/guard/decide", {"event": "x", "grant": True}),
        ("/api/gate/open", {}),
        ("/api/mode", {"mode": "locked"}),
        ("/api/guard/logout", {}),
        ("/api/alarm/ack", {"event": "x"}),
    ):
        assert gate.request("POST", path, body)[0] == 401, path
    cookie, csrf = gate.login()
    assert gate.post("/api/gate/open", {}, cookie, "wrong")[0] == 403
    status, _ = gate.post("/api/gate/open", {}, cookie, csrf, Origin="http://evil.example")
    assert status == 403
    status, _ = gate.post(
        "/api/mode", {"mode": "free"}, cookie, csrf, **{"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403
    # A form post (what a cross-site page can send without asking) is not JSON.
    status, _, _ = gate.request(
        "POST",
        "/api/gate/open",
        raw=b"x=1",
        headers={
            "Cookie": cookie,
            "X-CSRF-Token": csrf,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert status == 415
    status, _, _ = gate.request(
        "POST",
        "/api/mode",
        raw=b"{nope",
        headers={"Cookie": cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"},
    )
    assert status == 400
    assert gate.post("/api/mode", {"mode": "party"}, cookie, csrf)[0] == 400
    assert not [e for e in gate.ledger() if e["kind"] == "mode"]
    assert gate.get("/healthz")[0] == 200  # still alive after all that


def test_login_puts_the_guard_on_duty_and_logout_off(gate: Gate) -> None:
    cookie, csrf = gate.login()
    on = gate.wait_event(lambda e: e["kind"] == "guard_on", "guard_on")
    assert on["guard"] == "G01"
    state = gate.state(cookie)
    assert state["me"] == {"guard": "G01", "csrf": csrf}
    assert state["guards_on_duty"] == ["G01"]
    # The shared PIN lets another guard id in, but not a guard who has a PIN of their own.
    gate.login("G07", SHARED_PIN)
    status, _, _ = gate.request("POST", "/api/guard/login", {"guard": "G01", "pin": SHARED_PIN})
    assert status == 401
    assert gate.post("/api/guard/logout", {}, cookie, csrf)[0] == 200
    off = gate.wait_event(lambda e: e["kind"] == "guard_off", "guard_off")
    assert off["guard"] == "G01"
    assert gate.post("/api/gate/open", {}, cookie, csrf)[0] == 401
    assert gate.state()["guards_on_duty"] == ["G07"]


def test_wrong_pins_lock_the_guard_out(gate: Gate) -> None:
    for _ in range(2):
        status, _, _ = gate.request("POST", "/api/guard/login", {"guard": "G01", "pin": "0000"})
        assert status == 401
    status, headers, _ = gate.request("POST", "/api/guard/login", {"guard": "G01", "pin": "0000"})
    assert status == 429 and int(headers["retry-after"]) > 0
    # Locked out: even the right PIN is refused until the lockout ends.
    status, _, _ = gate.request("POST", "/api/guard/login", {"guard": "G01", "pin": PIN_G01})
    assert status == 429
    assert not [e for e in gate.ledger() if e["kind"] == "guard_on"]
    assert 'gated_status_logins_total{result="locked"}' in gate.get("/metrics")[2].decode()


def test_bad_login_bodies_are_refused(gate: Gate) -> None:
    for body in (
        {},
        {"guard": "G01"},
        {"guard": "", "pin": "1234"},
        {"guard": "G 1", "pin": "1234"},
        {"guard": "G01", "pin": 1234},
        {"guard": "G01", "pin": "12"},
        ["G01"],
    ):
        assert gate.request("POST", "/api/guard/login", body)[0] == 400, body


def test_a_guard_approves_a_pending_verdict(gate: Gate) -> None:
    cookie, csrf = gate.login()
    gate.arrive(36.6, "1122334455")
    event_id = pending_id(gate)
    status, body = gate.post("/api/guard/decide", {"event": event_id, "grant": True}, cookie, csrf)
    assert status == 200, body
    granted = gate.wait_event(lambda e: e.get("decision") == "guard_granted", "guard_granted")
    assert granted["ref"] == event_id and granted["guard"] == "G01"
    assert gate.state()["pending"] == []
    # Answered already: the second answer finds nothing to decide.
    status, _ = gate.post("/api/guard/decide", {"event": event_id, "grant": False}, cookie, csrf)
    assert status == 404


def test_a_missing_temperature_needs_a_clinical_reading_to_grant(gate: Gate) -> None:
    cookie, csrf = gate.login()
    assert gate.post("/api/mode", {"mode": "guard_only"}, cookie, csrf)[0] == 200
    mode = gate.wait_event(lambda e: e["kind"] == "mode", "the mode event")
    assert (mode["mode"], mode["by"]) == ("guard_only", "G01")
    gate.put("card", "0A1B2C3D4E")  # no temperature: times out into needs_guard
    event_id = pending_id(gate)
    pending = gate.state()["pending"][0]
    assert "temp_missing" in pending["reasons"] and pending["left_s"] > 0
    decide = "/api/guard/decide"
    assert gate.post(decide, {"event": event_id, "grant": True}, cookie, csrf)[0] == 422
    body = {"event": event_id, "grant": True, "confirm_temp_c": 38.0}
    assert gate.post(decide, body, cookie, csrf)[0] == 422
    body["confirm_temp_c"] = 99
    assert gate.post(decide, body, cookie, csrf)[0] == 400
    body["confirm_temp_c"] = 36.8
    assert gate.post(decide, body, cookie, csrf)[0] == 200
    granted = gate.wait_event(lambda e: e.get("decision") == "guard_granted", "guard_granted")
    assert granted["confirm_temp_c"] == 36.8 and granted["guard"] == "G01"


def test_open_once_and_alarm_acknowledgement(gate: Gate) -> None:
    cookie, csrf = gate.login()
    status, body = gate.post("/api/gate/open", {}, cookie, csrf)
    assert status == 200, body
    opened = gate.wait_event(lambda e: e.get("decision") == "granted", "the open")
    assert opened["guard"] == "G01"
    gate.put("passage")
    gate.wait_event(lambda e: e["kind"] == "passage", "the passage")
    gate.put("passage")  # nobody was let in: tailgating
    alarm = gate.wait_event(lambda e: e.get("alarm") == "tailgate", "the tailgate alarm")
    state = wait_until(lambda: (s := gate.state())["alarms"] and s, what="the open alarm")
    assert [a["id"] for a in state["alarms"]] == [alarm["id"]]
    assert gate.state()["today"]["overrides"] == 1
    assert gate.post("/api/alarm/ack", {"event": alarm["id"]}, cookie, csrf)[0] == 200
    assert gate.state()["alarms"] == []
    ack = gate.wait_event(lambda e: e["kind"] == "ack", "the ack in the ledger")
    assert (ack["ref"], ack["alarm"], ack["guard"]) == (alarm["id"], "tailgate", "G01")
    assert gate.post("/api/alarm/ack", {"event": alarm["id"]}, cookie, csrf)[0] == 404
    assert gate.post("/api/mode", {"mode": "locked"}, cookie, csrf)[0] == 200
    assert gate.post("/api/gate/open", {}, cookie, csrf)[0] == 409


def test_a_stuck_screen_never_holds_up_a_verdict(gate: Gate) -> None:
    server = next(s for s in gate.app.services if type(s).__name__ == "StatusServer")
    release = threading.Event()
    stuck = threading.Event()

    def block() -> None:
        stuck.set()
        release.wait(60)

    server.loop.call_soon_threadsafe(block)  # type: ignore[attr-defined]
    assert stuck.wait(20)
    try:
        for _ in range(5):
            gate.arrive(36.5, "0A1B2C3D4E")
            gate.put("passage")
        # Committed (and the turnstile driven) while the screen's loop cannot run at all.
        wait_until(
            lambda: sum(e["kind"] == "passage" for e in gate.ledger()) == 5, what="5 passages"
        )
    finally:
        release.set()
    state = wait_until(lambda: (s := gate.state())["today"]["in"] == 5 and s, what="catch-up")
    assert len([e for e in state["events"] if e["kind"] == "decision"]) == 5


# ---- where it listens -------------------------------------------------------------------------


def test_no_screen_when_listen_is_empty(tmp_path: Path) -> None:
    config = make_config(tmp_path, status={"listen": ""})
    app = App(config)
    assert not any(type(s).__name__ == "StatusServer" for s in app.services)
    app.close()


def test_a_taken_port_leaves_the_gate_running(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = make_config(tmp_path, status={"listen": f"127.0.0.1:{port}"})
        app = App(config)
        thread = threading.Thread(target=app.run, daemon=True)
        thread.start()
        done = app.controller.submit(lambda: app.controller.desk.guard_on("G9"))
        assert done.result(timeout=20)["kind"] == "guard_on"
        app.stop_event.set()
        thread.join(timeout=15)
        assert not thread.is_alive()


def test_today_counts_start_again_at_local_midnight() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from gated.status.view import ScreenHistory

    h = ScreenHistory(ZoneInfo("Asia/Shanghai"), boot=1)
    # 15:59 UTC is 23:59 in Shanghai; 16:01 UTC is the next day there.
    h.add(
        {
            "seq": 1,
            "ts": "2026-03-01T15:59:00.000Z",
            "kind": "passage",
            "passed": True,
            "direction": "in",
        }
    )
    h.add(
        {
            "seq": 2,
            "ts": "2026-03-01T15:59:30.000Z",
            "kind": "decision",
            "decision": "denied",
            "reasons": ["fever"],
        }
    )
    assert h.counts(datetime(2026, 3, 1, 15, 59, 50, tzinfo=UTC))["in"] == 1
    assert h.counts(datetime(2026, 3, 1, 16, 0, 10, tzinfo=UTC)) == dict.fromkeys(
        ("in", "out", "denied", "fever", "overrides"), 0
    )
    h.add(
        {
            "seq": 3,
            "ts": "2026-03-01T16:01:00.000Z",
            "kind": "decision",
            "decision": "guard_granted",
            "guard": "G01",
            "reasons": ["color_guard"],
        }
    )
    counts = h.counts(datetime(2026, 3, 1, 16, 2, tzinfo=UTC))
    assert (counts["in"], counts["denied"], counts["overrides"]) == (0, 0, 1)
    assert h.add({"seq": 2, "ts": "2026-03-01T16:03:00.000Z", "kind": "passage"}) is None


# ---- PIN guessing: every try reserved before its hash -----------------------------------------


def logins_counted(gate: Gate) -> dict[str, int]:
    """``gated_status_logins_total`` by result, from ``/metrics``."""
    text = gate.get("/metrics")[2].decode()
    out = dict.fromkeys(("ok", "wrong", "locked"), 0)
    for result in out:
        prefix = f'gated_status_logins_total{{result="{result}"}} '
        for line in text.splitlines():
            if line.startswith(prefix):
                out[result] = int(float(line[len(prefix) :]))
    return out


def logins_at_once(host: str, port: int, tries: list[tuple[str, str, str]]) -> list[int]:
    """POST every ``(source address, guard, pin)`` login at the same moment; their statuses."""
    import aiohttp

    async def main() -> list[int]:
        clients: dict[str, aiohttp.ClientSession] = {}
        for source in {s for s, _, _ in tries}:
            connector = aiohttp.TCPConnector(limit=0, local_addr=(source, 0), force_close=True)
            clients[source] = aiohttp.ClientSession(connector=connector)
        start = asyncio.Event()

        async def one(source: str, guard: str, pin: str) -> int:
            await start.wait()
            url = f"http://{host}:{port}/api/guard/login"
            async with clients[source].post(url, json={"guard": guard, "pin": pin}) as r:
                await r.read()
                return r.status

        try:
            tasks = [asyncio.ensure_future(one(*t)) for t in tries]
            await asyncio.sleep(0)
            start.set()
            return list(await asyncio.gather(*tasks))
        finally:
            for c in clients.values():
                await c.close()

    return asyncio.run(main())


def test_200_logins_at_once_check_at_most_5_pins_of_a_guard(tmp_path: Path) -> None:
    gate = Gate(tmp_path, lockout_after=5, lockout_s=300, max_connections=256)
    try:
        tries = [("127.0.0.1", "G01", f"{n:04d}") for n in range(199)]
        tries.insert(150, ("127.0.0.1", "G01", PIN_G01))  # the right PIN, among the guesses
        statuses = logins_at_once("127.0.0.1", gate.port, tries)
        counted = logins_counted(gate)
        assert counted["ok"] + counted["wrong"] <= 5, counted
        assert counted["locked"] == 200 - counted["ok"] - counted["wrong"]
        # A wrong PIN that fills the budget is answered 429 too (with its Retry-After).
        assert statuses.count(200) == counted["ok"]
        assert statuses.count(401) + statuses.count(429) == 200 - counted["ok"]
    finally:
        gate.stop()


def test_30_source_addresses_share_the_gate_s_20_tries(tmp_path: Path) -> None:
    gate = Gate(tmp_path, lockout_after=5, lockout_s=300, max_connections=256)
    try:
        # 30 addresses x 4 guesses each, at other guard ids than the attacked ones: the
        # per-gate budget holds whatever the spread of addresses and ids.
        tries = [(f"127.0.0.{a}", f"G{a:02d}{n}", "0000") for a in range(2, 32) for n in range(4)]
        statuses = logins_at_once("127.0.0.1", gate.port, tries)
        counted = logins_counted(gate)
        assert counted["wrong"] == 20 and counted["ok"] == 0, counted
        assert counted["locked"] == 100 and statuses.count(429) >= 100
        # The gate is locked for every guard id now, from any address.
        status, headers, _ = gate.request(
            "POST", "/api/guard/login", {"guard": "G99", "pin": "1111"}
        )
        assert status == 429 and 0 < int(headers["retry-after"]) <= 300
    finally:
        gate.stop()


def lan_address() -> str | None:
    """An address of this machine's that is not loopback (None: it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def test_a_lan_guesser_never_locks_the_guard_out_of_the_booth(tmp_path: Path) -> None:
    lan = lan_address()
    if lan is None:
        pytest.skip("this machine has no address beyond loopback")
    port = free_port("0.0.0.0")
    token = write_token(tmp_path)
    gate = Gate(
        tmp_path,
        port=port,
        listen=f"0.0.0.0:{port}",
        lockout_after=5,
        lockout_s=300,
        max_connections=256,
        kiosk_token_file=str(token),
    )
    try:
        tries = [(lan, "G01", f"{n:04d}") for n in range(200)]
        statuses = logins_at_once(lan, gate.port, tries)
        metrics = gate.request("GET", "/metrics", headers=bearer(token))[2].decode()
        assert 'gated_status_logins_total{result="wrong"} 5.0' in metrics
        assert 'gated_status_logins_total{result="locked"} 195.0' in metrics
        assert statuses.count(200) == 0
        # From the LAN even the right PIN waits now...
        body = {"guard": "G01", "pin": PIN_G01}
        assert gate.request("POST", "/api/guard/login", body, via=lan)[0] == 429
        # ...but at the booth's own screen (loopback) G01 logs in at once.
        cookie, _ = gate.login()
        assert gate.request("GET", "/api/state", headers={"Cookie": cookie})[0] == 200
    finally:
        gate.stop()


# ---- who may read the screen, and how many at once ------------------------------------------

TOKEN = "k" * 8 + "0123456789abcdef0123456789abcdef"


def write_token(tmp_path: Path) -> Path:
    path = tmp_path / "kiosk.token"
    path.write_text(TOKEN + "\n")
    return path


def bearer(token_file: Path) -> dict[str, str]:
    return {"Authorization": "Bearer " + token_file.read_text().strip()}


def test_beyond_loopback_reads_need_a_login_or_the_kiosk_token(tmp_path: Path) -> None:
    # Listening on every address: the rule follows `listen`, so a client that comes in
    # over loopback (the booth's kiosk) needs the token too.
    port = free_port("0.0.0.0")
    token = write_token(tmp_path)
    gate = Gate(tmp_path, port=port, listen=f"0.0.0.0:{port}", kiosk_token_file=str(token))
    try:
        for path in ("/api/state", "/api/events", "/metrics"):
            status, headers, _ = gate.get(path)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer"), path
            wrong = {"Authorization": "Bearer " + "x" * 40}
            assert gate.request("GET", path, headers=wrong)[0] == 401, path
            conn = gate.connection()
            conn.request("GET", path, headers=bearer(token))
            assert conn.getresponse().status == 200, path  # Prometheus, or any reader
            conn.close()
        assert gate.get("/")[0] == 200 and gate.get("/healthz")[0] == 200
        # A guard's login reads it all.
        cookie, _ = gate.login()
        assert gate.state(cookie)["me"]["guard"] == "G01"
        # A kiosk browser opens /?kiosk=TOKEN once and keeps a cookie (not the token).
        assert gate.get("/?kiosk=" + "x" * 40)[0] == 401
        status, headers, _ = gate.get("/?kiosk=" + TOKEN)
        assert status == 303 and headers["location"] == "/"
        kiosk = headers["set-cookie"].split(";")[0]
        assert kiosk.startswith("gated_kiosk=") and TOKEN not in kiosk
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        assert gate.state(kiosk)["me"] is None
        # Read-only: the kiosk cookie is no guard.
        assert gate.post("/api/gate/open", {}, kiosk, "")[0] == 401
    finally:
        gate.stop()


def test_the_host_header_must_name_this_screen(tmp_path: Path) -> None:
    gate = Gate(tmp_path, host_names=["gate-north-1"])
    try:
        cookie, _ = gate.login()
        ok = {"Cookie": cookie}
        for host in (f"127.0.0.1:{gate.port}", f"localhost:{gate.port}", "gate-north-1:8080"):
            assert gate.request("GET", "/api/state", headers={**ok, "Host": host})[0] == 200
        # DNS rebinding: evil.example points at the gate; its page reaches the screen.
        for host in ("evil.example", f"evil.example:{gate.port}", "127.0.0.2", "[::1]"):
            status, _, body = gate.request("GET", "/api/state", headers={**ok, "Host": host})
            assert status == 421 and b"host_names" in body, host
        body = {"guard": "G01", "pin": PIN_G01}
        assert gate.request("POST", "/api/guard/login", body, {"Host": "evil.example"})[0] == 421
        with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as s:
            s.sendall(b"GET /api/state HTTP/1.0\r\n\r\n")  # no Host at all
            assert s.makefile("rb").readline().split()[1] == b"421"
    finally:
        gate.stop()


def open_stream(gate: Gate) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = gate.connection()
    conn.request("GET", "/api/events")
    return conn, conn.getresponse()


def test_live_screens_past_max_clients_get_503(tmp_path: Path) -> None:
    gate = Gate(tmp_path, max_clients=3, max_connections=10)
    streams = []
    try:
        for _ in range(3):
            conn, r = open_stream(gate)
            streams.append((conn, r))
            assert r.status == 200 and r.read(6) == b"retry:"
        conn, r = open_stream(gate)
        assert r.status == 503 and r.getheader("Retry-After") == "5"
        assert b"too many live screens" in r.read()
        conn.close()
        assert gate.get("/healthz")[0] == 200
        metrics = gate.get("/metrics")[2].decode()
        assert 'gated_status_refused_total{reason="clients"} 1.0' in metrics
        conn, r = streams.pop()
        r.close()  # the screen goes away: its place is free again soon
        conn.close()

        def a_stream_again() -> bool:
            conn, r = open_stream(gate)
            if r.status == 200:
                streams.append((conn, r))
                return True
            r.close()
            conn.close()
            return False

        wait_until(a_stream_again, what="room for a live screen again", timeout=20)
    finally:
        for conn, r in streams:
            r.close()
            conn.close()
        gate.stop()


def idle_connections(address: str, port: int, n: int, source: str = "") -> list[socket.socket]:
    return [socket.create_connection((address, port), 10, (source, 0)) for _ in range(n)]


def status_of(address: str, port: int, path: str = "/healthz", source: str = "") -> int:
    """The HTTP status of a GET, read off a raw socket (0: closed without an answer)."""
    with socket.create_connection((address, port), 10, (source, 0)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
        line = s.makefile("rb").readline().split()
        return int(line[1]) if len(line) > 1 else 0


def test_open_connections_past_max_connections_get_503(tmp_path: Path) -> None:
    gate = Gate(tmp_path, max_clients=2, max_connections=8)
    held = idle_connections("127.0.0.1", gate.port, 8)
    try:
        # Eight idle connections hold every place: one more is told 503 (not kept waiting).
        wait_until(lambda: status_of("127.0.0.1", gate.port) == 503, what="a 503")
        for s in held[:4]:
            s.close()
        wait_until(lambda: status_of("127.0.0.1", gate.port) == 200, what="room again")
        metrics = gate.get("/metrics")[2].decode()
        assert 'gated_status_refused_total{reason="connections"}' in metrics
    finally:
        for s in held:
            s.close()
        gate.stop()


def test_connections_from_the_lan_never_crowd_out_the_booth(tmp_path: Path) -> None:
    lan = lan_address()
    if lan is None:
        pytest.skip("this machine has no address beyond loopback")
    port = free_port("0.0.0.0")
    gate = Gate(tmp_path, port=port, listen=f"0.0.0.0:{port}", max_clients=2, max_connections=8)
    held = idle_connections(lan, port, 8, source=lan)
    try:
        wait_until(lambda: status_of(lan, port, source=lan) == 503, what="a 503 on the LAN")
        assert status_of("127.0.0.1", port) == 200  # the booth's screen and /healthz
    finally:
        for s in held:
            s.close()
        gate.stop()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gate")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "screen.crt", tmp_path / "screen.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_over_tls_the_session_cookie_is_secure(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    plain = Gate(tmp_path / "plain")
    try:
        status, headers, _ = plain.request(
            "POST", "/api/guard/login", {"guard": "G01", "pin": PIN_G01}
        )
        assert status == 200 and "Secure" not in headers["set-cookie"]
    finally:
        plain.stop()
    cert, key = self_signed(tmp_path)
    gate = Gate(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key))
    try:
        status, headers, _ = gate.request(
            "POST", "/api/guard/login", {"guard": "G01", "pin": PIN_G01}
        )
        flags = [f.strip() for f in headers["set-cookie"].split(";")[1:]]
        assert status == 200 and "Secure" in flags
        cookie = headers["set-cookie"].split(";")[0]
        assert gate.state(cookie)["me"]["guard"] == "G01"
    finally:
        gate.stop()
