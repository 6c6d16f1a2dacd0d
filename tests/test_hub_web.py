"""The fleet page (gated/hub/web.py) on a real hub store, over HTTP and in real Chromium.

The store is a real SQLite file filled as the ingest fills it (``add_events``,
``status``) with events built from the gate's own types; :class:`HubWeb` serves it on a
free port. Who may read it is tested as the gate's screen is: requests sent from this
machine's LAN address (not loopback) need an operator's login, requests over loopback
do not. ``GATED_SCREENSHOT=1`` also writes ``docs/hub-screenshot.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.events import event
from tests.support.hub_web import ZHANG, HubPage, lan_address
from tests.support.screen import ARTIFACTS, REPO, WAIT_MS, accessible, expect
from tests.support.waiting import wait_until


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubPage]:
    h = HubPage(tmp_path)
    yield h
    h.stop()


@pytest.fixture
def lan() -> str:
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no address beyond loopback")
    return address


#: What a gate's status might carry when its account is stolen: shown as text, never markup.
XSS = "<img src=x onerror=alert(1)>"


def fleet(hub: HubPage) -> None:
    """Four gates of two sites: one fine, one offline, one with a gap and an old registry,
    one with an open fever alarm and a clock not synchronised."""
    d = hub.district
    now = time.time()
    d.registry("north", 1)
    d.registry("north", 2)
    d.passages("north", "n1", 3, 3)
    d.status("north", "n1", registry_version=2)
    d.passages("north", "n2", 2, 1, at=now - 120)
    d.status("north", "n2", at=now - 120, registry_version=2)  # heard 2 minutes ago
    d.passages("south", "s1", 2, 2)
    d.add("south", "s1", event("mode", mode="locked", previous="normal", by="G1"), seq=9)
    d.status("south", "s1", mode="locked", registry_version=None)
    d.passages("south", "s2", 1, 1)
    d.alarm("south", "s2", person=ZHANG.model_dump(), temperature_c=38.4)
    d.status(
        "south",
        "s2",
        clock_synced=False,
        devices={"card": {"ok": True, "detail": ""}, "thermometer": {"ok": False, "detail": XSS}},
    )


# ---- the API ----------------------------------------------------------------------------


def test_gates_come_what_needs_the_duty_officer_first(hub: HubPage) -> None:
    fleet(hub)
    gates = hub.get_json("/api/gates")
    assert [(g["site"], g["gate"]) for g in gates] == [
        ("north", "n2"),  # offline
        ("south", "s1"),  # events 5..8 missing
        ("south", "s2"),  # an open alarm
        ("north", "n1"),
    ]
    by = {g["gate"]: g for g in gates}
    assert not by["n2"]["online"] and by["n2"]["attention"][0] == "offline"
    assert by["s1"]["missing"] == 4 and by["s1"]["through"] == 4 and by["s1"]["mode"] == "locked"
    assert by["n1"]["online"] and by["n1"]["attention"] == [] and by["n1"]["behind"] is False
    assert by["n1"]["registry_version"] == 2 and by["n1"]["latest_version"] == 2
    assert by["s2"]["alarms"] == 1 and by["s2"]["clock_synced"] is False
    assert by["s2"]["devices"]["thermometer"] == {"ok": False, "detail": XSS}
    assert set(by["s2"]["attention"]) == {"alarms", "devices", "clock"}
    # The site's latest registry is 2: a gate of it that says 1 is behind.
    hub.district.status("north", "n1", registry_version=1)
    n1 = next(g for g in hub.get_json("/api/gates") if g["gate"] == "n1")
    assert n1["behind"] is True and n1["attention"] == ["behind"]


def test_a_status_of_the_wrong_shape_is_shown_without_what_does_not_fit(hub: HubPage) -> None:
    hub.district.add("north", "x9", event("mode", mode="locked", previous="normal", by="G1"))
    hub.district.status(
        "north",
        "x9",
        devices=["card"],
        backlog="lots",
        mode=5,
        registry_version="9",
        clock_synced="yes",
        detail="y" * 100_000,
    )
    (row,) = hub.get_json("/api/gates")
    assert row["devices"] == {} and row["backlog"] == 0 and row["registry_version"] is None
    assert row["mode"] is None and row["clock_synced"] is True  # from its event
    hub.district.status("north", "x9", devices={"card" * 50: {"ok": "yes"}, "qr": {"ok": False}})
    (row,) = hub.get_json("/api/gates")
    assert row["devices"] == {"qr": {"ok": False, "detail": ""}}


def test_alarms_are_masked_and_an_operator_acknowledges_one(hub: HubPage) -> None:
    fleet(hub)
    status, _, raw = hub.request("GET", "/api/alarms")
    alarms = json.loads(raw)
    assert status == 200 and len(alarms) == 1
    a = alarms[0]
    assert (a["site"], a["gate"], a["alarm"], a["temperature_c"]) == ("south", "s2", "fever", 38.4)
    assert a["person"]["name"] == "Z**** W**"
    assert b"Zhang Wei" not in raw and b"320623199001011234" not in raw
    ack = {"site": "south", "gate": "s2", "seq": a["seq"]}
    # Operators are set up: an acknowledgement needs one's session and its CSRF token.
    assert hub.request("POST", "/api/alarms/ack", ack)[0] == 401
    cookie, csrf = hub.login()
    assert hub.request("POST", "/api/alarms/ack", ack, {"Cookie": cookie})[0] == 403
    good = {"Cookie": cookie, "X-CSRF-Token": csrf}
    cross = {**good, "Origin": "http://evil.example"}
    assert hub.request("POST", "/api/alarms/ack", ack, cross)[0] == 403
    status, _, body = hub.request("POST", "/api/alarms/ack", {"site": "south"}, good)
    assert status == 400 and b"site, gate and seq" in body
    assert hub.request("POST", "/api/alarms/ack", dict(ack, seq=1), good)[0] == 404  # a decision
    assert hub.request("POST", "/api/alarms/ack", ack, good)[0] == 200
    assert hub.get_json("/api/alarms") == []
    row = hub.district.store.conn.execute("SELECT by FROM hub_alarm_acks").fetchall()
    assert row == [("duty",)]


def test_beyond_loopback_everything_needs_an_operator(hub_lan: HubPage, lan: str) -> None:
    hub = hub_lan
    fleet(hub)
    for path in ("/api/gates", "/api/alarms", "/api/events", "/metrics", "/api/compliance"):
        assert hub.request("GET", path, via=lan)[0] == 401, path
    for path in ("/api/gates", "/api/alarms", "/metrics"):
        assert hub.request("GET", path, via="127.0.0.1")[0] == 200, path  # this machine
    assert hub.request("GET", "/", via=lan)[0] == 200  # the shell, to log in from
    assert hub.request("GET", "/static/app.js", via=lan)[0] == 200
    assert hub.request("GET", "/healthz", via=lan)[0] == 200
    assert hub.get_json("/api/session", via=lan)["login_needed"] is True
    assert hub.get_json("/api/session")["login_needed"] is False
    wrong = {"operator": "duty", "pin": "0000"}
    assert hub.request("POST", "/api/login", wrong, via=lan)[0] == 401
    assert hub.request("POST", "/api/login", dict(wrong, operator="root"), via=lan)[0] == 401
    cookie, _ = hub.login(via=lan)
    assert len(hub.get_json("/api/gates", via=lan, cookie=cookie)) == 4
    # Guessing from the LAN locks the operator out there, not at the hub's own console.
    for _ in range(4):
        hub.request("POST", "/api/login", wrong, via=lan)
    status, headers, _ = hub.request("POST", "/api/login", wrong, via=lan)
    assert status == 429 and 0 < int(headers["retry-after"]) <= 300
    assert hub.request("POST", "/api/login", {"operator": "duty", "pin": "7391"}, via=lan)[0] == 429
    hub.login(via="127.0.0.1")
    metrics = hub.request("GET", "/metrics")[2].decode()
    assert 'gated_hub_web_logins_total{result="wrong"} 6.0' in metrics
    assert 'gated_hub_web_logins_total{result="locked"} 2.0' in metrics


@pytest.fixture
def hub_lan(tmp_path: Path) -> Iterator[HubPage]:
    h = HubPage(tmp_path, host="0.0.0.0")
    yield h
    h.stop()


def test_the_host_header_must_name_the_hub(hub: HubPage) -> None:
    assert hub.request("GET", "/api/gates", headers={"Host": f"localhost:{hub.port}"})[0] == 200
    for host in ("evil.example", f"evil.example:{hub.port}", "127.0.0.2"):
        status, headers, body = hub.request("GET", "/api/gates", headers={"Host": host})
        assert status == 421 and b"host_names" in body, host
        assert headers["x-frame-options"] == "DENY"
    status, headers, body = hub.request("GET", "/")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and b"http" not in body.split(b"<body")[0]


def test_open_connections_past_the_limit_get_503(hub: HubPage) -> None:
    import socket

    from gated.hub.web import MAX_CONNECTIONS

    held = [socket.create_connection(("127.0.0.1", hub.port), 10) for _ in range(MAX_CONNECTIONS)]
    try:

        def answer() -> bytes:
            with socket.create_connection(("127.0.0.1", hub.port), 10) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return s.makefile("rb").read()

        got = wait_until(lambda: (a := answer()).startswith(b"HTTP/1.1 503") and a, "a 503")
        assert b"too many connections to the fleet page" in got
        for s in held[:8]:
            s.close()
        wait_until(lambda: answer().startswith(b"HTTP/1.1 200"), "room again")
        metrics = hub.request("GET", "/metrics")[2].decode()
        assert 'gated_hub_web_refused_total{reason="connections"}' in metrics
    finally:
        for s in held:
            s.close()


def test_metrics_count_the_fleet(hub: HubPage) -> None:
    fleet(hub)
    hub.stats.add("stored", 14)
    hub.stats.add("duplicates", 3)
    hub.stats.add("replay_requests", 2)
    hub.stats.refused("topic_mismatch")
    hub.stats.refused("topic_mismatch")
    hub.stats.last_commit = time.time() - 5
    status, headers, body = hub.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for line in (
        "gated_hub_events_stored_total 14.0",
        "gated_hub_duplicates_total 3.0",
        "gated_hub_replay_requests_total 2.0",
        'gated_hub_refused_total{code="topic_mismatch"} 2.0',
        'gated_hub_missing{gate="s1",site="south"} 4.0',
        'gated_hub_missing{gate="n1",site="north"} 0.0',
        "gated_hub_gates 4.0",
        "gated_hub_gates_online 3.0",
        "gated_hub_events 18.0",  # what the store holds
        "gated_hub_broker_connected 1.0",
    ):
        assert line in text, line
    age = next(x for x in text.splitlines() if x.startswith("gated_hub_last_commit_age_seconds "))
    assert 5 <= float(age.split()[1]) < 60


def test_healthz_says_why_it_is_not_healthy(hub: HubPage) -> None:
    status, _, body = hub.request("GET", "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    hub.stats.connected = False
    status, _, raw = hub.request("GET", "/healthz")
    body = json.loads(raw)
    assert status == 503 and body["ok"] is False and body["broker"] is False
    assert body["error"] == "broker not connected"


def test_healthz_fails_when_the_store_does_not_answer(tmp_path: Path) -> None:
    hub = HubPage(tmp_path)
    try:
        assert hub.request("GET", "/healthz")[0] == 200
        # The store's file is replaced by a directory: a page starting now cannot open it.
        hub.web.stop()
        db = hub.config.database_path
        hub.district.store.close()
        for p in db.parent.glob(db.name + "*"):
            p.unlink()
        db.mkdir()
        from gated.hub.web import HubWeb

        hub.web = HubWeb(hub.config, hub.stats, db)
        hub.web.start()
        hub.port = hub.web.port
        status, _, body = hub.request("GET", "/healthz")
        assert status == 503 and json.loads(body)["error"].startswith("store: ")
    finally:
        hub.web.stop()


def test_report_and_compliance_come_from_the_reports(hub: HubPage) -> None:
    fleet(hub)
    report = hub.get_json("/api/report/daily")
    assert report["report"] == "hub_daily" and set(report["sites"]) == {"north", "south"}
    n2 = next(g for g in report["gates"] if g["gate"] == "n2")
    assert n2["compliance"]["passages"] == 2 and n2["compliance"]["share"] == 0.5
    assert ("north", "n2") in {(b["site"], b["gate"]) for b in report["black"]}
    assert b"0A1B2C3D4E" not in hub.request("GET", "/api/report/daily")[2]
    only = hub.get_json("/api/report/daily?site=south")
    assert {g["site"] for g in only["gates"]} == {"south"}
    assert hub.request("GET", "/api/report/daily?date=yesterday")[0] == 400
    history = hub.get_json("/api/compliance?days=14")
    assert len(history["days"]) == 14 and history["gates"]["north/n2"][-1] == 0.5
    assert hub.request("GET", "/api/compliance?days=1000")[0] == 400


def test_the_live_stream_says_hello_then_each_change(hub: HubPage) -> None:
    import http.client

    fleet(hub)
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=20)
    conn.request("GET", "/api/events")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type", "").startswith("text/event-stream")
    messages: list[tuple[str, Any]] = []

    def next_of(kind: str) -> Any:
        """The data of the next message of ``kind`` (reading the stream up to it)."""
        while True:
            for i, (k, data) in enumerate(messages):
                if k == kind:
                    del messages[: i + 1]
                    return data
            event, data = "", ""
            while (line := r.readline().decode().rstrip("\n")) != "":
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data += line.removeprefix("data: ")
            if event:
                messages.append((event, json.loads(data)))

    hello = next_of("hello")
    assert len(hello["gates"]) == 4 and len(hello["alarms"]) == 1
    alarm = hub.district.alarm("north", "n1", alarm="tailgate")
    hub.web.notify("alarm", alarm)
    shown = next_of("alarm")
    assert (shown["gate"], shown["alarm"], shown["seq"]) == ("n1", "tailgate", alarm["seq"])
    gate = next_of("gate")  # the gate's row, read back: one alarm open now
    assert gate["gate"] == "n1" and gate["alarms"] == 1 and "alarms" in gate["attention"]
    assert {a["gate"] for a in next_of("alarms")} == {"n1", "s2"}
    # The gate's own guard acknowledges the fever at s2: it leaves the page with that event.
    fever = next(a for a in hello["alarms"] if a["gate"] == "s2")
    hub.district.add("south", "s2", event("ack", ref=fever["id"], alarm="fever", guard="G1"))
    hub.web.notify("gate", {"site": "south", "gate": "s2"})
    assert next_of("gate")["alarms"] == 0
    assert [a["gate"] for a in next_of("alarms")] == ["n1"]
    conn.close()


def test_a_gate_whose_seqs_conflict_comes_first_in_the_gates_and_metrics(hub: HubPage) -> None:
    fleet(hub)
    # n1 sends seq 2 again under another id: its ledger began again from 1, or a forgery.
    hub.district.conflict("north", "n1", 2)
    gates = hub.get_json("/api/gates")
    n1 = gates[0]
    assert (n1["gate"], n1["conflicts"], n1["attention"]) == ("n1", 1, ["conflicts"])
    assert all(g["conflicts"] == 0 for g in gates[1:]) and gates[1]["gate"] == "n2"
    text = hub.request("GET", "/metrics")[2].decode()
    assert 'gated_hub_conflicts{gate="n1",site="north"} 1.0' in text
    assert 'gated_hub_conflicts{gate="s2",site="south"} 0.0' in text


def test_open_alarms_are_read_through_their_own_indexes(hub: HubPage) -> None:
    """The page reads the open alarms on every change: by the alarms' index and the acks'
    (by the alarm each answers), never through the whole event table."""
    fleet(hub)
    store = hub.district.store
    fever = store.alarms()[0]
    # An ack of another gate naming the alarm's id does not close it; its own gate's does.
    hub.district.add("north", "n1", event("ack", ref=fever["id"], alarm="fever", guard="G1"))
    assert store.open_alarms() == {("south", "s2"): 1}
    assert store.open_alarms("south", "s2") == {("south", "s2"): 1}
    assert store.open_alarms("north", "n1") == {}
    run: list[str] = []
    store.conn.set_trace_callback(run.append)
    try:
        store.alarms(limit=200)
        store.open_alarms()
        store.open_alarms("south", "s2")
    finally:
        store.conn.set_trace_callback(None)
    queries = [q for q in run if "hub_events e" in q]
    assert len(queries) == 3
    for q in queries:
        plan = [r[3] for r in store.conn.execute("EXPLAIN QUERY PLAN " + q)]
        scans = [p for p in plan if p.startswith(("SCAN", "SEARCH")) and " e" in p[:9]]
        assert scans and all("hub_events_alarms" in p for p in scans), plan
        assert any(p.startswith("SEARCH k USING INDEX hub_events_acks") for p in plan), plan
        assert "<expr>=?" in next(p for p in plan if "hub_events_acks" in p), plan
    hub.district.add("south", "s2", event("ack", ref=fever["id"], alarm="fever", guard="G1"))
    assert store.open_alarms() == {} and store.alarms() == []


def test_the_page_answers_while_a_report_runs(hub: HubPage) -> None:
    """A day's report takes its own thread and store connection: the gates and /healthz
    answer while it runs, not after it."""
    import threading

    fleet(hub)
    hub.district.busy_day("north", "n1", 6000)
    hub.get_json("/api/gates")  # today's black list made once
    done = threading.Event()

    def report() -> None:
        try:
            assert hub.request("GET", "/api/report/daily")[0] == 200
        finally:
            done.set()

    t = threading.Thread(target=report)
    t.start()
    answered = []
    while not done.is_set():
        status, _, _ = hub.request("GET", "/healthz")
        gates = hub.request("GET", "/api/gates")[0]
        if not done.is_set():
            answered.append((status, gates))
    t.join(timeout=60)
    # Without a thread of its own, one answer at most gets in before the report.
    assert len(answered) >= 3 and set(answered) == {(200, 200)}, answered


def test_the_live_stream_ends_when_the_operator_logs_out(hub_lan: HubPage, lan: str) -> None:
    import http.client

    hub = hub_lan
    fleet(hub)
    cookie, csrf = hub.login(via=lan)
    conn = http.client.HTTPConnection(lan, hub.port, timeout=20, source_address=(lan, 0))
    conn.request("GET", "/api/events", headers={"Cookie": cookie})
    r = conn.getresponse()
    assert r.status == 200
    while not r.readline().startswith(b"event: hello"):
        pass
    headers = {"Cookie": cookie, "X-CSRF-Token": csrf}
    assert hub.request("POST", "/api/logout", {}, headers, via=lan)[0] == 200
    # The stream ends (within GONE_CHECK_S): read to its end, or past a heartbeat or two.
    deadline = time.monotonic() + 10
    ended = False
    while not ended and time.monotonic() < deadline:
        ended = r.readline() == b""
    conn.close()
    assert ended, "the stream went on after the logout"
    assert hub.request("GET", "/api/events", headers={"Cookie": cookie}, via=lan)[0] == 401


# ---- in Chromium -------------------------------------------------------------------------


class FleetScreen:
    """One tab on the fleet page, failing the test on any script error."""

    def __init__(self, browser: Any, url: str, lang: str | None = None):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.set_default_timeout(WAIT_MS)
        if lang is not None:
            self.page.add_init_script(f"localStorage.setItem('gated.hub.lang', {lang!r})")
        self.page.goto(url)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors


def test_the_duty_officer_sees_the_fleet_and_acknowledges_a_live_alarm(
    browser: Any, hub: HubPage
) -> None:
    fleet(hub)
    screen = FleetScreen(browser, hub.base() + "/")
    page = screen.page
    page.wait_for_selector("body[data-link=up]")
    rows = page.locator("#gate-rows tr")
    expect(rows).to_have_count(4)
    assert [rows.nth(i).get_attribute("data-gate") for i in range(4)] == [
        "north/n2",
        "south/s1",
        "south/s2",
        "north/n1",
    ]
    assert page.inner_text("#title") == "门岗总览"  # zh-CN by default
    assert "离线" in page.inner_text("[data-gate='north/n2']")
    assert "缺 4" in page.inner_text("[data-gate='south/s1']")
    expect(page.locator("#alarm-list li")).to_have_count(1)
    # A device's detail, whatever a gate sent, is a tooltip's text.
    assert page.locator("#gate-rows img").count() == 0
    assert page.get_attribute("[data-gate='south/s2'] .dev.bad", "title") == XSS
    shown = page.inner_text("#alarm-list")
    assert "Z**** W**" in shown and "38.4" in shown
    content = page.content()
    assert "Zhang Wei" not in content and "320623199001011234" not in content
    # The lists and the chart come from the day's report and the history.
    expect(page.locator("#black li[data-gate='north/n2']")).to_have_count(1)
    expect(page.locator("#chart tr[data-gate='north/n2'] rect.low")).to_have_count(1)
    page.wait_for_selector("#report-body table")
    accessible(page, "the fleet with an open alarm")
    # A tailgate at n1, as the ingest would announce it: on the page at once, with a sound.
    page.click("#title")  # a gesture: browsers start sound only after one
    beeps = page.evaluate("window.gatedBeeps || 0")
    tail = hub.district.alarm("north", "n1", alarm="tailgate")
    hub.web.notify("alarm", tail)
    hub.web.notify("gate", {"site": "north", "gate": "n1"})
    item = page.locator(f"#alarm-list li[data-alarm='north/n1/{tail['seq']}']")
    expect(item).to_have_count(1)
    expect(page.locator("#alarm-list li")).to_have_count(2)
    wait_until(lambda: page.evaluate("window.gatedBeeps || 0") > beeps, "a beep", timeout=20)
    expect(page.locator("[data-gate='north/n1'] .tag.alarms")).to_have_count(1)
    page.click("#lang")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    assert page.inner_text("#title") == "Fleet"
    assert "OFFLINE" in page.inner_text("[data-gate='north/n2']")
    assert "Tailgating" in page.inner_text("#alarm-list")
    accessible(page, "the fleet with two open alarms")
    path = screen.shot("hub-fleet-en")
    if os.environ.get("GATED_SCREENSHOT") == "1":
        shutil.copy(path, REPO / "docs" / "hub-screenshot.png")
    # Operators are set up: acknowledging asks for a login, then takes the alarm away.
    item.locator("button.ack").click()
    page.wait_for_selector("#logindlg[open]")
    page.fill("#operator", "duty")
    page.fill("#pin", "7391")
    page.click("#loginok")
    page.wait_for_selector("#who:has-text('duty')")
    item.locator("button.ack").click()
    expect(item).to_have_count(0)
    acks = hub.district.store.conn.execute(
        "SELECT by FROM hub_alarm_acks WHERE gate = 'n1' AND seq = ?", (tail["seq"],)
    ).fetchall()
    assert acks == [("duty",)]
    # n1 sends a seq the hub holds under another id: its row goes first, with the count.
    hub.district.conflict("north", "n1", 2)
    hub.web.notify("gate", {"site": "north", "gate": "n1"})
    expect(page.locator("[data-gate='north/n1'] .tag.conflicts")).to_have_count(1)
    assert rows.nth(0).get_attribute("data-gate") == "north/n1"
    assert "1 seq conflicts" in page.inner_text("[data-gate='north/n1'] .cont")
    screen.close()


def test_from_another_machine_the_page_asks_for_a_login_first(
    browser: Any, hub_lan: HubPage, lan: str
) -> None:
    fleet(hub_lan)
    screen = FleetScreen(browser, hub_lan.base(lan) + "/", lang="en")
    page = screen.page
    page.wait_for_selector("#logindlg[open]")
    assert page.locator("#gate-rows tr").count() == 0
    accessible(page, "the login asked for")
    page.fill("#operator", "duty")
    page.fill("#pin", "0000")
    page.click("#loginok")
    page.wait_for_selector("#loginerr:has-text('Wrong operator or PIN')")
    page.fill("#pin", "7391")
    page.click("#loginok")
    expect(page.locator("#gate-rows tr")).to_have_count(4)
    assert page.inner_text("#who") == "Operator: duty"
    screen.close()
