"""The hub's reports over events real gates recorded, against each gate's own report."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gated.cli.data import LEDGER_COLUMNS
from gated.cli.main import main
from gated.cli.report import build_report
from gated.events import parse_event
from gated.hub.config import HubConfig, load_hub_config
from gated.hub.reports import compliance_history, daily
from gated.hub.store import EventRow, HubStore
from tests.support.hub_store import add_registry, copy_ledger
from tests.support.rig import Rig

TZ = ZoneInfo("Asia/Shanghai")
ZHANG_CARD, LI_CARD, STRANGER = "0A1B2C3D4E", "1122334455", "FF00FF00FF"
DAY1, DAY2, DAY3 = date(2026, 2, 2), date(2026, 2, 3), date(2026, 2, 4)
#: What the hub adds to a gate's own report object.
HUB_KEYS = ("missing", "online", "registry_version")


def session(rig: Rig, temps: list[float], card: str | None, passage: bool = False) -> None:
    for t in temps:
        rig.feed("temp", t)
    if card:
        rig.feed("card", card)
    if passage:
        rig.feed("passage", True, after=1.0)


def pending_id(rig: Rig) -> str:
    (event_id,) = rig.controller.desk.pending
    return event_id


def local_now(rig: Rig) -> datetime:
    return datetime.fromtimestamp(rig.clock.time(), TZ)


def busy_gate(tmp_path: Path) -> Rig:
    """s1/g1 over three days: every kind of entry on the second (as tests/test_report.py)."""
    rig = Rig(tmp_path / "g1")
    c = rig.controller
    assert local_now(rig).date() == DAY1
    session(rig, [36.5], ZHANG_CARD, passage=True)  # Zhang's first use
    rig.wait(86_400)
    # Li needs a guard, nobody is on duty: unattended; G7 comes and lets her in.
    session(rig, [36.6], LI_CARD)
    rig.wait(61)
    rig.wait(300)
    session(rig, [36.6], LI_CARD)
    rig.wait(30)
    c.desk.guard_on("G7")
    c.desk.decide(pending_id(rig), True, "G7")
    rig.feed("passage", True, after=2.0)
    session(rig, [36.5], ZHANG_CARD, passage=True)
    c.desk.open_once("screen", guard="G7")  # nothing checked
    rig.feed("passage", True, after=2.0)
    c.desk.guard_off("G7")
    session(rig, [36.5], STRANGER)  # not in the registry, twice
    rig.wait(600)
    session(rig, [36.5], STRANGER)
    session(rig, [38.0, 38.1], ZHANG_CARD)  # fever
    rig.feed("passage", True, after=20)  # a tailgate
    # Zhang granted at 23:59:58, through after midnight: the passage is day 3's.
    now = local_now(rig)
    rig.wait((now.replace(hour=23, minute=59, second=57) - now).total_seconds())
    session(rig, [36.5], ZHANG_CARD)
    rig.feed("passage", True, after=3.0)
    assert local_now(rig).date() == DAY3
    return rig


def good_gate(tmp_path: Path, gate: str, *, tailgates: int = 0, li: bool = False) -> Rig:
    """A quiet gate of s1: on day 2 Zhang goes through twice (and Li, and tailgaters)."""
    rig = Rig(tmp_path / gate, gate={"id": gate})
    rig.wait(86_400)
    assert local_now(rig).date() == DAY2
    rig.controller.desk.guard_on("G9")
    session(rig, [36.5], ZHANG_CARD, passage=True)
    rig.wait(60)
    session(rig, [36.4], ZHANG_CARD, passage=True)
    if li:
        session(rig, [36.6], LI_CARD)
        rig.controller.desk.decide(pending_id(rig), True, "G9")
        rig.feed("passage", True, after=1.0)
    for _ in range(tailgates):
        rig.feed("passage", True, after=30)
    return rig


def hub_config(tmp_path: Path, black_below: float = 0.95) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "hub.toml"
    path.write_text(
        f'[hub]\nid = "d1"\ndatabase = "sqlite:///hub.db"\nblack_below = {black_below}\n'
        '[report]\ntimezone = "Asia/Shanghai"\n'
    )
    return path


def gate_part(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in HUB_KEYS}


def by_gate(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{g['site']}/{g['gate']}": g for g in report["gates"]}


@pytest.fixture
def config(tmp_path: Path) -> HubConfig:
    return load_hub_config(hub_config(tmp_path))


@pytest.fixture
def store(config: HubConfig) -> Any:
    s = HubStore(config.database_path)
    yield s
    s.close()


@pytest.mark.parametrize("pii", ["masked", "full"])
def test_each_gate_is_the_object_its_own_report_gives(
    tmp_path: Path, config: HubConfig, store: HubStore, pii: str
) -> None:
    g1 = busy_gate(tmp_path)
    g2 = good_gate(tmp_path, "g2", tailgates=1)
    for rig in (g1, g2):
        copy_ledger(store, rig.config.storage.path, pii=pii)
    for day in (DAY1, DAY2, DAY3, date(2026, 3, 1)):
        hub = by_gate(daily(store, config, day))
        for rig in (g1, g2):
            own = build_report(rig.config, rig.conn, day)
            mine = hub[f"s1/{rig.config.gate.id}"]
            assert gate_part(mine) == own, (day, rig.config.gate.id)
            assert (mine["missing"], mine["online"], mine["registry_version"]) == (0, False, None)
    # The busy day really is busy: the comparison is not of two empty objects.
    day2 = by_gate(daily(store, config, DAY2))["s1/g1"]
    assert day2["compliance"]["passages"] == 4 and day2["compliance"]["checked"] == 2
    assert len(day2["unattended_periods"]) == 1 and day2["fever_alarms"]
    assert day2["fever_alarms"][0]["person"]["name"] == "Z**** W**"
    day3 = by_gate(daily(store, config, DAY3))["s1/g1"]
    assert day3["compliance"] == {
        "passages": 1,
        "checked": 1,
        "share": 1.0,
        "without_temperature": 0,
        "without_credential": 0,
    }
    text = json.dumps(daily(store, config, DAY2), ensure_ascii=False)
    for secret in ("Zhang Wei", "320623199001011234", ZHANG_CARD, LI_CARD, STRANGER, "Li Na"):
        assert secret not in text


def test_red_and_black_lists_and_site_totals(
    tmp_path: Path, config: HubConfig, store: HubStore
) -> None:
    busy = busy_gate(tmp_path)  # 2 of 4 checked, an unattended period
    fine = good_gate(tmp_path, "g2", li=True)  # 3 of 3
    fair = good_gate(tmp_path, "g3")  # 2 of 2
    leaky = good_gate(tmp_path, "g4", tailgates=1)  # 2 of 3
    for rig in (busy, fine, fair, leaky):
        copy_ledger(store, rig.config.storage.path)
    r = daily(store, config, DAY2)
    assert r["red"] == [
        {"site": "s1", "gate": "g2", "share": 1.0, "passages": 3},
        {"site": "s1", "gate": "g3", "share": 1.0, "passages": 2},
    ]
    assert [(b["gate"], b["share"], b["why"]) for b in r["black"]] == [
        ("g1", 0.5, ["compliance", "unattended"]),
        ("g4", 0.6667, ["compliance"]),
    ]
    site = r["sites"]["s1"]
    assert (site["gates"], site["passages"], site["checked"], site["share"]) == (4, 12, 9, 0.75)
    assert (site["fever_alarms"], site["tailgates"], site["unattended_periods"]) == (1, 2, 1)
    assert site["unattended_minutes"] > 5  # from the first alarm to G7 coming on duty
    assert site["decisions"]["guard_granted"] == 2 and site["missing"] == 0
    # black_below is the config's: at 0.5 the busy gate's share is no longer a reason.
    lenient = load_hub_config(hub_config(tmp_path / "lenient", black_below=0.5))
    r = daily(store, lenient, DAY2)
    assert [(b["gate"], b["why"]) for b in r["black"]] == [("g1", ["unattended"])]
    assert [e["gate"] for e in r["red"]] == ["g2", "g3", "g4"]
    # One site only.
    assert daily(store, config, DAY2, site="s2")["gates"] == []


def test_missing_events_put_a_gate_on_the_black_list(
    tmp_path: Path, config: HubConfig, store: HubStore
) -> None:
    fair = good_gate(tmp_path, "g3")
    whole = good_gate(tmp_path, "g2")
    # The broker never delivered two of g3's events (its boot and its first decision).
    copy_ledger(store, fair.config.storage.path, skip={2, 3})
    copy_ledger(store, whole.config.storage.path)
    r = daily(store, config, DAY2)
    assert by_gate(r)["s1/g3"]["missing"] == 2
    assert [(b["gate"], b["why"], b["missing"]) for b in r["black"]] == [("g3", ["missing"], 2)]
    assert [e["gate"] for e in r["red"]] == ["g2"]
    assert r["sites"]["s1"]["missing"] == 2


def test_unregistered_cards_against_the_sites_registry(
    tmp_path: Path, config: HubConfig, store: HubStore
) -> None:
    busy = busy_gate(tmp_path)
    fine = good_gate(tmp_path, "g2", li=True)
    for rig in (busy, fine):
        copy_ledger(store, rig.config.storage.path)
    # No registry at the hub yet: the gates' own verdict (unknown_card) is all there is.
    r = daily(store, config, DAY2)
    assert r["unregistered_cards"] == [
        {
            "site": "s1",
            "card": "******00FF",
            "count": 2,
            "gates": ["g1"],
            "source": "gate",
            "registry_version": None,
            "match": None,
        }
    ]
    # The district's registry holds Zhang only (Li's card was taken off it at the hub, the
    # gates still know it): her card is one the registry does not hold, at both gates.
    add_registry(store, "s1", 1, [{"id": "P1", "cards": [ZHANG_CARD]}, {"id": "P2"}])
    r = daily(store, config, DAY2)
    got = [(u["card"], u["count"], u["gates"], u["source"]) for u in r["unregistered_cards"]]
    assert got == [
        ("******4455", 3, ["g1", "g2"], "registry"),
        ("******00FF", 2, ["g1"], "registry"),
    ]
    # The gates publish masked uids (pii = "masked"): compared with the registry's masked.
    assert {u["match"] for u in r["unregistered_cards"]} == {"masked"}
    assert r["sites"]["s1"]["registry_version"] == 1
    # The next version holds Li again (its uid as typed, lower case): only the stranger is
    # left; gates publishing full uids are compared by uid.
    persons = [{"id": "P1", "cards": [ZHANG_CARD]}, {"id": "P2", "cards": [LI_CARD.lower()]}]
    add_registry(store, "s1", 2, persons)
    full = HubStore(tmp_path / "full.db")
    for rig in (busy, fine):
        copy_ledger(full, rig.config.storage.path, pii="full")
    add_registry(full, "s1", 2, persons)
    for s, match in ((store, "masked"), (full, "uid")):
        r = daily(s, config, DAY2)
        assert [(u["card"], u["count"], u["match"]) for u in r["unregistered_cards"]] == [
            ("******00FF", 2, match)
        ]
        assert r["sites"]["s1"]["registry_version"] == 2
    full.close()


def test_cards_first_used_at_the_site(tmp_path: Path, config: HubConfig, store: HubStore) -> None:
    busy = busy_gate(tmp_path)  # Zhang first on day 1, Li and the stranger on day 2
    fine = good_gate(tmp_path, "g2", li=True)  # Zhang and Li, both new at g2 on day 2
    for rig in (busy, fine):
        copy_ledger(store, rig.config.storage.path)
    r = daily(store, config, DAY2)
    # Each gate's object says what the gate's own report says ...
    assert [c["card"] for c in by_gate(r)["s1/g2"]["first_used_cards"]] == [
        "******3D4E",
        "******4455",
    ]
    # ... the site's list leaves out Zhang, known at g1 since day 1; Li first came to g1.
    assert [(c["card"], c["gate"], c["person"]) for c in r["first_used_cards"]] == [
        ("******4455", "g1", "P2"),
        ("******00FF", "g1", None),
    ]
    assert daily(store, config, DAY1)["first_used_cards"][0]["card"] == "******3D4E"
    figures = daily(store, config, DAY2, cards=False)
    assert figures["first_used_cards"] == []
    assert [g["first_used_cards"] for g in figures["gates"]] == [[], []]
    assert figures["red"] == r["red"] and figures["black"] == r["black"]


def test_compliance_over_days(tmp_path: Path, config: HubConfig, store: HubStore) -> None:
    busy = busy_gate(tmp_path)
    leaky = good_gate(tmp_path, "g4", tailgates=1)
    copy_ledger(store, busy.config.storage.path)
    # The tailgater's passage has not reached the hub yet.
    (late,) = leaky.conn.execute(
        "SELECT seq FROM events WHERE kind = 'passage' AND json_extract(body, '$.ref') IS NULL"
    ).fetchone()
    copy_ledger(store, leaky.config.storage.path, skip={late})
    h = compliance_history(store, config, DAY3, days=4)
    assert h == {
        "days": ["2026-02-01", "2026-02-02", "2026-02-03", "2026-02-04"],
        "gates": {"s1/g1": [None, 1.0, 0.5, 1.0], "s1/g4": [None, None, 1.0, None]},
    }
    # It comes (a replay, days later): the day it belongs to is counted again.
    copy_ledger(store, leaky.config.storage.path)
    h = compliance_history(store, config, DAY3, days=4)
    assert h["gates"]["s1/g4"] == [None, None, 0.6667, None]
    assert compliance_history(store, config, DAY3, days=4) == h


# -- the command line --------------------------------------------------------------------


def run_hub(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run(
        [sys.executable, "-m", "gated.cli", "hub", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_hub_gates_as_json_and_text(tmp_path: Path, config: HubConfig, store: HubStore) -> None:
    fair = good_gate(tmp_path, "g3")
    copy_ledger(store, fair.config.storage.path, skip={4})
    now = time.time()
    store.begin()
    store.status("s1", "g3", {"state": "online", "mode": "normal", "backlog": 0}, now)
    store.status("s2", "g1", {"state": "online", "registry_version": 7}, now - 3600)
    # g3 sends seq 2 again under another id (its ledger begun again, or a forgery).
    held = store.conn.execute(
        "SELECT seq, kind, ts, body FROM hub_events WHERE gate = 'g3' AND seq = 2"
    ).fetchone()
    other = EventRow("s1", "g3", 2, "another-id", held[1], held[2], 2, True, now, held[3])
    assert len(store.add_events([other]).conflicts) == 1
    store.commit()
    path = str(hub_config(tmp_path))
    done = run_hub("gates", "-c", path, "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [list(r) for r in rows] == [
        [
            "site",
            "gate",
            "online",
            "last_seen",
            "boot",
            "mode",
            "backlog",
            "clock_synced",
            "registry_version",
            "received",
            "conflicts",
            "through",
            "missing",
            "purged",
        ]
    ] * 2
    g3, s2 = rows
    assert (g3["site"], g3["gate"], g3["online"], g3["mode"]) == ("s1", "g3", True, "normal")
    assert (g3["received"], g3["through"], g3["missing"], g3["boot"]) == (
        fair.conn.execute("SELECT count(*) FROM events").fetchone()[0] - 1,
        3,
        1,
        1,
    )
    assert g3["last_seen"].endswith("Z") and (g3["conflicts"], s2["conflicts"]) == (1, 0)
    # Not heard from for an hour: offline, whatever its last status said.
    assert (s2["online"], s2["registry_version"], s2["received"]) == (False, 7, 0)
    done = run_hub("gates", "-c", path)
    assert done.returncode == 0
    header, first, second = done.stdout.splitlines()
    assert header.split() == list(rows[0])
    assert first.split()[:3] == ["s1", "g3", "yes"] and second.split()[:3] == ["s2", "g1", "no"]
    assert first.split()[header.split().index("conflicts")] == "1"


def test_a_missing_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = str(hub_config(tmp_path))
    for args in (
        ("gates", "-c", path, "--format", "json"),
        ("report", "daily", "-c", path),
        ("export", "-c", path, "--format", "csv"),
    ):
        done = run_hub(*args)
        assert done.returncode == 1, args
        (line,) = done.stderr.strip().splitlines()
        assert "no hub database" in line and str(tmp_path / "hub.db") in line
        assert done.stdout == ""
    assert not (tmp_path / "hub.db").exists()


def test_report_daily_json_csv_and_text(
    tmp_path: Path, config: HubConfig, store: HubStore, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = busy_gate(tmp_path)
    fine = good_gate(tmp_path, "g2", li=True)
    for rig in (busy, fine):
        copy_ledger(store, rig.config.storage.path)
    path = str(hub_config(tmp_path))
    capsys.readouterr()

    def run(*args: str) -> str:
        code = main(["hub", "report", "daily", "-c", path, "--date", "2026-02-03", *args])
        out = capsys.readouterr().out
        assert code == 0
        return out

    as_json = json.loads(run("--format", "json"))
    expected = daily(store, config, DAY2)
    for g in (as_json, expected):
        for gate in g["gates"]:
            gate.pop("online")  # not the same instant
    assert as_json == expected
    rows = list(csv.DictReader(io.StringIO(run("--format", "csv"))))
    assert [
        (r["gate"], r["passages"], r["checked"], r["share"], r["list"], r["why"]) for r in rows
    ] == [
        ("g1", "4", "2", "0.5", "black", "compliance unattended"),
        ("g2", "3", "3", "1.0", "red", ""),
    ]
    assert rows[0]["tailgates"] == "1" and rows[0]["fever_alarms"] == "1"
    assert rows[0]["unattended_periods"] == "1" and rows[0]["missing"] == "0"
    text = run()
    for needle in (
        "gated hub daily report: 2026-02-03 (Asia/Shanghai), 2 gates",
        "Site s1: 2 gates",
        "compliance 71.4%",
        "Red list (compliance >= 95.0%, nothing missing):\n  s1/g2  100.0%",
        "Black list:\n  s1/g1  50.0%  compliance, unattended",
        "s1  ******00FF  2 times at g1 (by the gates' unknown_card)",
        "s1/g1  ",
    ):
        assert needle in text, needle
    for secret in ("Zhang Wei", ZHANG_CARD, LI_CARD, STRANGER, "Li Na"):
        assert secret not in text
    assert "s2" not in run("--site", "s2", "--format", "json").replace('"s2"', "")


def test_export_round_trips(
    tmp_path: Path, store: HubStore, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = busy_gate(tmp_path)
    fine = good_gate(tmp_path, "g2")
    for rig in (fine, busy):
        copy_ledger(store, rig.config.storage.path)
    path = str(hub_config(tmp_path))
    capsys.readouterr()

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["hub", "export", "-c", path, *args])
        out, err = capsys.readouterr()
        return code, out, err

    stored = list(store.events())
    assert [(e["site"], e["gate"]) for e in stored[:1]] == [("s1", "g1")]
    code, out, _ = run("--format", "jsonl")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == stored
    assert [(e["gate"], e["seq"]) for e in lines] == sorted((e["gate"], e["seq"]) for e in lines)
    code, out, _ = run("--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["site", "gate", *LEDGER_COLUMNS]
    table = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [(r["site"], r["gate"], int(r["seq"]), r["id"], r["kind"], r["ts"]) for r in table] == [
        (e["site"], e["gate"], e["seq"], e["id"], e["kind"], e["ts"]) for e in stored
    ]
    cards = {r["credential_ref"] for r in table if r["credential_kind"] == "card"}
    assert cards == {"******3D4E", "******4455", "******00FF"}  # as the gates published them
    # --gate, --site, --since.
    _, out, _ = run("--format", "jsonl", "--gate", "g2")
    assert {json.loads(line)["gate"] for line in out.splitlines()} == {"g2"}
    _, out, _ = run("--format", "jsonl", "--site", "elsewhere")
    assert out == ""
    since = "2026-02-03T16:00:00Z"  # local midnight of day 3
    _, out, _ = run("--format", "jsonl", "--since", since)
    assert [(e["gate"], e["kind"]) for e in map(json.loads, out.splitlines())] == [
        ("g1", "passage")
    ]
    code, out, err = run("--format", "csv", "--since", "yesterday")
    assert code == 2 and out == "" and "not an ISO 8601" in err


def test_what_a_forged_gate_sends_cannot_drive_the_terminal(
    tmp_path: Path, store: HubStore, capsys: pytest.CaptureFixture[str]
) -> None:
    fine = good_gate(tmp_path, "g2")
    copy_ledger(store, fine.config.storage.path)
    decision = next(e for e in fine.stored() if e["kind"] == "decision")
    # A stolen gate account publishes a decision whose card uid and a status whose mode
    # carry terminal control sequences: valid events all the same.
    forged = dict(decision, seq=1000, id="forged-1", gate="g9", reasons=["unknown_card"])
    forged["credential"] = {"kind": "card", "ref": "AB\x1b[2J\x1b[H\x07", "color": None}
    forged["decision"] = "denied"
    e = parse_event(json.dumps(forged), newer=True)
    assert e.seq == 1000
    store.begin()
    row = EventRow("s1", "g9", 1000, "forged-1", "decision", str(e.ts), 1, True, 0, "")
    store.add_events([dataclasses.replace(row, body=json.dumps(forged))])
    store.status("s1", "g9", {"state": "online", "mode": "\x1b[31mnormal"}, time.time())
    store.commit()
    path = str(hub_config(tmp_path))
    capsys.readouterr()
    assert main(["hub", "report", "daily", "-c", path, "--date", "2026-02-03"]) == 0
    assert main(["hub", "gates", "-c", path]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[H\\x07" in out  # the uid's last four characters, shown escaped
    assert "\\x1b[31mnormal" in out
