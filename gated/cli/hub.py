"""``gated hub ...``: the central service's commands (docs/contracts.md §9).

Each sub-command's work is in its module of :mod:`gated.hub`, imported when it runs:
``run`` in :mod:`gated.hub.service`, ``gates``, ``report`` and ``export`` in
:mod:`gated.hub.reports`, ``registry publish`` and ``revoke`` in :mod:`gated.hub.registry`.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from gated.cli.report import _date


def _call(module: str, name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), name)(args))

    return run


def _version(value: str) -> int:
    """``--above``: a registry version a gate can still have one above (0 to 2^53-2)."""
    from gated.mqtt.registry_sync import MAX_VERSION

    if not (value.isascii() and value.isdigit() and len(value) <= 16) or int(value) >= MAX_VERSION:
        raise argparse.ArgumentTypeError(
            f"expected a version from 0 to {MAX_VERSION - 1} (the next must be at most"
            f" {MAX_VERSION}), got {value!r}"
        )
    return int(value)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a hub config: exit 0, or 2 with one line per problem."""
    from gated.hub.config import load_hub_config

    config = load_hub_config(args.config)
    problems = []
    if not config.mqtt.urls:
        problems.append(f"{args.config}: mqtt.urls: the hub needs a broker (at least one url)")
    if problems:
        from gated.errors import ConfigError

        raise ConfigError(problems)
    print(f"{args.config}: ok")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hub ...`` to the ``gated`` sub-commands."""
    p = sub.add_parser("hub", help="the central service: every gate's events and registry")
    hub = p.add_subparsers(dest="hub", metavar="HUB_COMMAND")
    hub.required = True

    def with_config(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("-c", "--config", required=True, help="hub config file (TOML)")
        return q

    q = with_config(hub.add_parser("run", help="subscribe, store, watch, serve the fleet page"))
    q.set_defaults(func=_call("gated.hub.service", "cmd_run"))

    q = with_config(hub.add_parser("check-config", help="validate a hub config file"))
    q.set_defaults(func=cmd_check_config)

    q = with_config(hub.add_parser("gates", help="one row per gate"))
    q.add_argument("--format", choices=("text", "json"), default="text")
    q.set_defaults(func=_call("gated.hub.reports", "cmd_gates"))

    q = hub.add_parser("registry", help="the sites' registries")
    rsub = q.add_subparsers(dest="registry", metavar="REGISTRY_COMMAND")
    rsub.required = True
    r = with_config(rsub.add_parser("publish", help="a CSV as the site's next retained snapshot"))
    r.add_argument("file", help="registry CSV (the columns of `gated registry import`)")
    r.add_argument("--site", required=True)
    r.add_argument(
        "--above",
        type=_version,
        metavar="N",
        help="make the version above N too: the highest a gate reports, when its registry"
        " came from elsewhere (an older hub database)",
    )
    r.set_defaults(func=_call("gated.hub.registry", "cmd_publish"))

    q = with_config(
        hub.add_parser("revoke", help="revoke a card or a pass at every gate of a site")
    )
    q.add_argument("--site", required=True)
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--card", help="card uid")
    what.add_argument("--jti", help="pass id")
    q.set_defaults(func=_call("gated.hub.registry", "cmd_revoke"))

    q = hub.add_parser("report", help="reports over the stored events")
    rsub = q.add_subparsers(dest="report", metavar="REPORT")
    rsub.required = True
    r = with_config(
        rsub.add_parser("daily", help="one day, per gate and site; red and black lists")
    )
    r.add_argument("--date", type=_date, help="YYYY-MM-DD in [report] timezone (default today)")
    r.add_argument("--site")
    r.add_argument("--format", choices=("text", "json", "csv"), default="text")
    r.set_defaults(func=_call("gated.hub.reports", "cmd_report_daily"))

    q = with_config(hub.add_parser("export", help="the district ledger"))
    q.add_argument("--since", help="ISO time (UTC): events stamped from then")
    q.add_argument("--site")
    q.add_argument("--gate")
    q.add_argument("--format", choices=("csv", "jsonl"), required=True)
    q.set_defaults(func=_call("gated.hub.reports", "cmd_export"))
