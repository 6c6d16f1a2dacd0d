"""The daily report (``gated report daily``): a pure function of one day's ledger events.

What the district asks a checkpoint for each day: counts by decision and reason,
fever alarms, the guards' overrides, the periods a guard was needed and nobody was
on duty, cards used for the first time, cards not in the registry, and compliance:
the share of passages whose decision checked both a temperature and a credential.
Card uids and names are masked; temperatures are shown only for fever alarms.

Reasons are counted once per session: a guard's answer repeats the reasons of the
``needs_guard`` decision it answers, so only a reason it adds (``guard_timeout``)
counts again. ``reasons_by_decision`` counts them per decision event instead, the
rows matching ``decisions``. Compliance counts every passage that went through: one
with no grant open (a tailgate, or a walk-through while the gate was free or the
fire input active) had no check at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gated.clock import iso_utc, parse_iso_utc
from gated.events import card_ref
from gated.privacy import mask_name, mask_uid


def day_bounds(day: date, tz: ZoneInfo) -> tuple[str, str]:
    """The UTC stamps ``[start, end)`` of a calendar day in the gate's time zone."""
    start = datetime.combine(day, time(0), tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tz)
    return iso_utc(start.timestamp()), iso_utc(end.timestamp())


def local_time(ts: str, tz: ZoneInfo) -> str:
    """``HH:MM:SS`` in the gate's time zone of a ledger stamp (``...Z``)."""
    try:
        when = parse_iso_utc(ts)
    except (ValueError, AttributeError):
        return "??:??:??"
    return when.astimezone(tz).strftime("%H:%M:%S")


def earlier_refs(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """The decisions the day's passages and guard answers refer to that the day does not hold.

    (A grant just before midnight, its passage just after.) Whoever reads a ledger looks
    them up by id and hands them to :func:`daily_report` as ``earlier_decisions``.
    """
    events = list(events)
    ids = {e.get("id") for e in events if e.get("kind") == "decision"}
    return {
        str(e["ref"])
        for e in events
        if e.get("kind") in ("passage", "decision") and e.get("ref") and e["ref"] not in ids
    }


def day_cards(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """The card uids the day's decisions name (those whose first use is to be told)."""
    return {uid for e in events if e.get("kind") == "decision" and (uid := card_ref(e))}


@dataclass
class _Period:
    start: str
    end: str
    alarms: int = 1
    ended_by: dict[str, Any] | None = None


@dataclass
class _UnknownCard:
    card: str | None
    count: int = 0
    first: str = ""
    last: str = ""


@dataclass
class _Day:
    tz: ZoneInfo
    decisions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    reasons_by_decision: dict[str, Counter[str]] = field(default_factory=dict)
    alarms: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    overrides: dict[str, Counter[str]] = field(default_factory=dict)
    fever: list[dict[str, Any]] = field(default_factory=list)
    periods: list[_Period] = field(default_factory=list)
    first_cards: list[dict[str, Any]] = field(default_factory=list)
    unknown: dict[str, _UnknownCard] = field(default_factory=dict)
    passages: Counter[str] = field(default_factory=Counter)
    compliance: Counter[str] = field(default_factory=Counter)
    boots: set[int] = field(default_factory=set)
    unsynced: int = 0
    purged: int = 0
    guard_since_alarm: bool = True


def daily_report(
    events: Iterable[Mapping[str, Any]],
    *,
    day: date,
    tz: ZoneInfo,
    site: str,
    gate: str,
    cards_seen_before: set[str] | frozenset[str] = frozenset(),
    earlier_decisions: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report of ``day`` from its events in ``seq`` order.

    ``cards_seen_before``: the cards of the day that were used before it (so a card's
    first use can be told). ``earlier_decisions``: decisions stamped before the day
    that a passage or a guard's answer of the day refers to (just after midnight), by id.
    """
    d = _Day(tz)
    seen = set(cards_seen_before)
    decisions: dict[str, Mapping[str, Any]] = dict(earlier_decisions or {})
    total = 0
    for e in events:
        total += 1
        kind = str(e.get("kind"))
        d.kinds[kind] += 1
        if isinstance(e.get("boot"), int):
            d.boots.add(e["boot"])
        if e.get("clock_synced") is False:
            d.unsynced += 1
        if kind == "decision":
            if isinstance(e.get("id"), str):
                decisions[e["id"]] = e
            _decision(d, e, seen, decisions)
        elif kind == "passage":
            _passage(d, e, decisions)
        elif kind == "alarm":
            _alarm(d, e)
        elif kind == "guard_on":
            _guard_on(d, e)
        elif kind == "purge":
            d.purged += int(e.get("events") or 0)
    start, end = day_bounds(day, tz)
    passages = d.compliance["passages"]
    return {
        "report": "daily",
        "date": day.isoformat(),
        "timezone": str(tz.key),
        "site": site,
        "gate": gate,
        "from": start,
        "to": end,
        "events": total,
        "events_by_kind": dict(sorted(d.kinds.items())),
        "boots": sorted(d.boots),
        "unsynced_clock_events": d.unsynced,
        "decisions": dict(sorted(d.decisions.items())),
        "reasons": dict(sorted(d.reasons.items())),
        "reasons_by_decision": {
            k: dict(sorted(c.items())) for k, c in sorted(d.reasons_by_decision.items())
        },
        "alarms": dict(sorted(d.alarms.items())),
        "passages": {
            "passed": d.passages["passed"],
            "not_passed": d.passages["not_passed"],
            "without_grant": d.passages["without_grant"],
            "tailgates": d.alarms["tailgate"],
        },
        "fever_alarms": d.fever,
        "overrides": {g: dict(sorted(c.items())) for g, c in sorted(d.overrides.items())},
        "unattended_periods": [
            {
                "start": local_time(p.start, tz),
                "end": local_time(p.end, tz),
                "alarms": p.alarms,
                "ended_by": p.ended_by,
            }
            for p in d.periods
        ],
        "first_used_cards": d.first_cards,
        "unknown_cards": [
            {
                "card": u.card,
                "count": u.count,
                "first": local_time(u.first, tz),
                "last": local_time(u.last, tz),
            }
            for u in d.unknown.values()
        ],
        "compliance": {
            "passages": passages,
            "checked": d.compliance["checked"],
            "share": round(d.compliance["checked"] / passages, 4) if passages else None,
            "without_temperature": d.compliance["without_temperature"],
            "without_credential": d.compliance["without_credential"],
        },
        "purged_events": d.purged,
    }


def _who(e: Mapping[str, Any]) -> dict[str, Any] | None:
    person = e.get("person")
    if not isinstance(person, Mapping):
        return None
    return {"id": person.get("id"), "name": mask_name(person.get("name"))}


def _reasons(e: Mapping[str, Any]) -> list[str]:
    reasons = e.get("reasons")
    return [str(r) for r in reasons] if isinstance(reasons, list) else []


def _decision(
    d: _Day,
    e: Mapping[str, Any],
    seen: set[str],
    decisions: Mapping[str, Mapping[str, Any]],
) -> None:
    decision = str(e.get("decision"))
    d.decisions[decision] += 1
    reasons = _reasons(e)
    for r in reasons:
        d.reasons_by_decision.setdefault(decision, Counter())[r] += 1
    # Once per session: a follow-up counts only what its needs_guard did not say
    # (all of it when that decision is not in the ledger any more).
    answered = decisions.get(str(e.get("ref"))) if e.get("ref") is not None else None
    already = set(_reasons(answered)) if answered is not None else set()
    for r in dict.fromkeys(reasons):
        if r not in already:
            d.reasons[r] += 1
    cred = e.get("credential")
    if decision in ("guard_granted", "guard_denied"):
        guard = str(e.get("guard") or "?")
        d.overrides.setdefault(guard, Counter())[decision] += 1
    elif isinstance(cred, Mapping) and cred.get("kind") == "remote":
        # An open from the screen (by a guard) or over MQTT (by its sender).
        who = str(e.get("guard") or cred.get("ref") or "?")
        d.overrides.setdefault(who, Counter())["remote_open"] += 1
    ts = str(e.get("ts", ""))
    card = card_ref(e)
    if card is None:
        return
    if card not in seen:
        seen.add(card)
        person = e.get("person")
        d.first_cards.append(
            {
                "time": local_time(ts, d.tz),
                "card": mask_uid(card),
                "person": person.get("id") if isinstance(person, Mapping) else None,
            }
        )
    # A guard's follow-up repeats the reasons of the decision it answers: counted once.
    if "unknown_card" in reasons and e.get("ref") is None:
        u = d.unknown.setdefault(card, _UnknownCard(mask_uid(card), first=ts))
        u.count += 1
        u.last = ts


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _passage(d: _Day, e: Mapping[str, Any], decisions: Mapping[str, Mapping[str, Any]]) -> None:
    ref = e.get("ref")
    if not e.get("passed"):
        d.passages["not_passed"] += 1
        return
    d.passages["passed"] += 1
    d.compliance["passages"] += 1
    if ref is None:
        # No grant open (a tailgate, or free passage): nothing was checked.
        d.passages["without_grant"] += 1
    decision = decisions.get(str(ref), {}) if ref is not None else {}
    # A guard who grants records the clinical reading that stands in for the gate's.
    has_temp = _number(decision.get("temperature_c")) or (
        decision.get("decision") == "guard_granted" and _number(decision.get("confirm_temp_c"))
    )
    cred = decision.get("credential")
    # A remote open is no credential check, whoever ordered it.
    has_cred = isinstance(cred, Mapping) and cred.get("kind") in ("card", "qr")
    if has_temp and has_cred:
        d.compliance["checked"] += 1
    if not has_temp:
        d.compliance["without_temperature"] += 1
    if not has_cred:
        d.compliance["without_credential"] += 1


def _alarm(d: _Day, e: Mapping[str, Any]) -> None:
    alarm = str(e.get("alarm"))
    d.alarms[alarm] += 1
    ts = str(e.get("ts", ""))
    if alarm == "fever":
        temp = e.get("temperature_c")
        d.fever.append(
            {
                "time": local_time(ts, d.tz),
                "person": _who(e),
                "temperature_c": temp if isinstance(temp, int | float) else None,
            }
        )
    elif alarm == "unattended":
        # Alarms with no guard coming on duty between them are one period.
        if d.periods and not d.guard_since_alarm:
            d.periods[-1].end = ts
            d.periods[-1].alarms += 1
        else:
            d.periods.append(_Period(ts, ts))
        d.guard_since_alarm = False


def _guard_on(d: _Day, e: Mapping[str, Any]) -> None:
    if d.periods and not d.guard_since_alarm:
        d.periods[-1].ended_by = {
            "guard": e.get("guard"),
            "time": local_time(str(e.get("ts", "")), d.tz),
        }
    d.guard_since_alarm = True


# -- text ------------------------------------------------------------------------------


def format_text(r: Mapping[str, Any]) -> str:
    """The report as plain text for a terminal or an e-mail."""
    out = [
        f"gated daily report: {r['site']}/{r['gate']}, {r['date']} ({r['timezone']})",
        f"events {r['events']}, daemon starts {len(r['boots'])}, "
        f"stamped with an unsynchronised clock {r['unsynced_clock_events']}",
        "",
        f"Decisions: {sum(r['decisions'].values())}",
    ]
    out += [f"  {k:<16}{v:>6}" for k, v in r["decisions"].items()]
    out.append("Reasons, once per session:" + ("" if r["reasons"] else " none"))
    out += [f"  {k:<20}{v:>6}" for k, v in r["reasons"].items()]
    by_decision = r["reasons_by_decision"]
    if any(by_decision.values()):
        out.append("Reasons by decision:")
        for decision, counts in by_decision.items():
            out += [f"  {decision:<16}{k:<20}{v:>6}" for k, v in counts.items()]
    p = r["passages"]
    out.append(
        f"Passages: {p['passed']} passed, {p['not_passed']} not passed; "
        f"{p['without_grant']} with no grant open, {p['tailgates']} of them tailgates"
    )
    c = r["compliance"]
    if c["passages"]:
        out.append(
            f"Compliance: {c['checked']} of {c['passages']} passages "
            f"({c['share'] * 100:.1f}%) had both a temperature and a credential checked"
        )
    else:
        out.append("Compliance: no passages")
    alarms = ", ".join(f"{k} {v}" for k, v in r["alarms"].items()) or "none"
    out.append(f"Alarms: {alarms}")
    out.append(f"Fever alarms: {len(r['fever_alarms'])}")
    for f in r["fever_alarms"]:
        who = f["person"] or {}
        temp = f"{f['temperature_c']:.1f} °C" if f["temperature_c"] is not None else "?"
        name = who.get("name") or ""
        out.append(f"  {f['time']}  {temp}  {who.get('id') or 'unidentified'} {name}".rstrip())
    out.append("Overrides by guard:" + ("" if r["overrides"] else " none"))
    for guard, counts in r["overrides"].items():
        line = (
            f"  {guard}: granted {counts.get('guard_granted', 0)}, "
            f"denied {counts.get('guard_denied', 0)}"
        )
        if counts.get("remote_open"):
            line += f", opened remotely {counts['remote_open']}"
        out.append(line)
    out.append("Unattended periods:" + ("" if r["unattended_periods"] else " none"))
    for u in r["unattended_periods"]:
        end = (
            f"; guard {u['ended_by']['guard']} on duty at {u['ended_by']['time']}"
            if u["ended_by"]
            else "; no guard came"
        )
        out.append(f"  {u['start']}-{u['end']}  {u['alarms']} decisions waited{end}")
    out.append("Cards used for the first time:" + ("" if r["first_used_cards"] else " none"))
    out += [
        f"  {x['time']}  {x['card']}  {x['person'] or 'not registered'}"
        for x in r["first_used_cards"]
    ]
    out.append("Cards not in the registry:" + ("" if r["unknown_cards"] else " none"))
    for x in r["unknown_cards"]:
        out.append(f"  {x['card']}  {x['count']} times, {x['first']} to {x['last']}")
    if r["purged_events"]:
        out.append(f"Purged by retention: {r['purged_events']} events")
    return "\n".join(out) + "\n"
