"""How the hub's reports look: ``gated hub gates`` and ``hub report daily`` as text and CSV."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from gated.cli.data import LEDGER_COLUMNS
from gated.clock import iso_utc
from gated.hub.store import HubStore, is_online

if TYPE_CHECKING:
    from gated.hub.config import HubConfig

#: ``gated hub gates``: the columns of docs/contracts.md §9, in order.
GATES_COLUMNS = (
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
)

#: ``gated hub report daily --format csv``: one row per gate.
DAILY_CSV_COLUMNS = (
    "date",
    "site",
    "gate",
    "online",
    "events",
    "decisions",
    "granted",
    "denied",
    "needs_guard",
    "guard_granted",
    "guard_denied",
    "passages",
    "checked",
    "share",
    "without_temperature",
    "without_credential",
    "tailgates",
    "fever_alarms",
    "unattended_periods",
    "unknown_cards",
    "first_used_cards",
    "missing",
    "registry_version",
    "list",
    "why",
)


#: ``gated hub export --format csv``: site and gate, then the columns of ``gated ledger export``.
EXPORT_COLUMNS = ("site", "gate", *LEDGER_COLUMNS)


def gate_table(store: HubStore, config: HubConfig, now: float) -> list[dict[str, Any]]:
    """The ``gated hub gates`` rows (``last_seen`` as an ISO stamp, UTC)."""
    out = []
    for row in store.gate_rows():
        d = {k: row.get(k) for k in GATES_COLUMNS}
        d["online"] = is_online(row, now, config.hub.offline_after_s)
        d["last_seen"] = iso_utc(row["last_seen"]) if row.get("last_seen") is not None else None
        out.append(d)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(rows: list[list[str]]) -> str:
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )


def printable(text: str) -> str:
    """``text`` for a terminal: what a gate sent that is not printable is shown escaped.

    (A gate's account could be stolen: a card uid or a mode it sends must not move the
    cursor or clear the screen of the duty officer reading the report.)
    """
    return "".join(
        ch if ch.isprintable() or ch == "\n" else ch.encode("unicode_escape").decode()
        for ch in text
    )


def format_gates_text(rows: list[dict[str, Any]]) -> str:
    """The gates as a plain table."""
    if not rows:
        return "no gate heard of yet\n"
    body = [[_cell(r[c]) for c in GATES_COLUMNS] for r in rows]
    return printable(_table([list(GATES_COLUMNS), *body]))


def _share(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def daily_csv_rows(report: Mapping[str, Any]) -> Iterator[list[Any]]:
    """The rows (after :data:`DAILY_CSV_COLUMNS`) of ``hub report daily --format csv``."""
    red = {(e["site"], e["gate"]) for e in report["red"]}
    black = {(e["site"], e["gate"]): e["why"] for e in report["black"]}
    for g in report["gates"]:
        key = (g["site"], g["gate"])
        d, c = g["decisions"], g["compliance"]
        yield [
            report["date"],
            g["site"],
            g["gate"],
            g["online"],
            g["events"],
            sum(d.values()),
            d.get("granted", 0),
            d.get("denied", 0),
            d.get("needs_guard", 0),
            d.get("guard_granted", 0),
            d.get("guard_denied", 0),
            c["passages"],
            c["checked"],
            "" if c["share"] is None else c["share"],
            c["without_temperature"],
            c["without_credential"],
            g["passages"]["tailgates"],
            len(g["fever_alarms"]),
            len(g["unattended_periods"]),
            len(g["unknown_cards"]),
            len(g["first_used_cards"]),
            g["missing"],
            "" if g["registry_version"] is None else g["registry_version"],
            "black" if key in black else "red" if key in red else "",
            " ".join(black.get(key, ())),
        ]


def format_daily_text(r: Mapping[str, Any]) -> str:
    """The hub's day as plain text: sites, gates, the two lists, the cards."""
    out = [
        f"gated hub daily report: {r['date']} ({r['timezone']}), {len(r['gates'])} gates",
        "",
    ]
    for site, t in r["sites"].items():
        out.append(
            f"Site {site}: {t['gates']} gates, {sum(t['decisions'].values())} decisions, "
            f"{t['passages']} passages, compliance {_share(t['share'])}, "
            f"fever {t['fever_alarms']}, tailgates {t['tailgates']}, "
            f"unattended {t['unattended_periods']} ({t['unattended_minutes']} min), "
            f"missing events {t['missing']}"
        )
    if r["gates"]:
        out.append("")
        head = ["site", "gate", "online", "decisions", "passages", "checked", "share"]
        head += ["fever", "tailgates", "unattended", "guard", "missing"]
        rows = [head]
        for g in r["gates"]:
            guard = sum(
                v for k, v in g["decisions"].items() if k in ("guard_granted", "guard_denied")
            )
            rows.append(
                [
                    g["site"],
                    g["gate"],
                    _cell(g["online"]),
                    str(sum(g["decisions"].values())),
                    str(g["compliance"]["passages"]),
                    str(g["compliance"]["checked"]),
                    _share(g["compliance"]["share"]),
                    str(len(g["fever_alarms"])),
                    str(g["passages"]["tailgates"]),
                    str(len(g["unattended_periods"])),
                    str(guard),
                    str(g["missing"]),
                ]
            )
        out.append(_table(rows).rstrip("\n"))
    out.append("")
    out.append(f"Red list (compliance >= {_share(r['black_below'])}, nothing missing):")
    out += [f"  {e['site']}/{e['gate']}  {_share(e['share'])}" for e in r["red"]] or ["  none"]
    out.append("Black list:")
    out += [
        f"  {e['site']}/{e['gate']}  {_share(e['share'])}  {', '.join(e['why'])}"
        for e in r["black"]
    ] or ["  none"]
    out.append("Cards not in the site's registry:")
    for u in r["unregistered_cards"]:
        how = "(by the gates' unknown_card)" if u["source"] == "gate" else ""
        if u.get("match") == "masked":
            how = "(by the masked uid)"
        at = ", ".join(u["gates"])
        out.append(f"  {u['site']}  {u['card']}  {u['count']} times at {at} {how}".rstrip())
    if not r["unregistered_cards"]:
        out.append("  none")
    out.append("Cards used for the first time at their site:")
    out += [
        f"  {x['site']}/{x['gate']}  {x['time']}  {x['card']}  {x['person'] or 'not registered'}"
        for x in r["first_used_cards"]
    ] or ["  none"]
    return printable("\n".join(out) + "\n")
