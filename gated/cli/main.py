"""The ``gated`` command line (contracts §2): one clear line on error, a traceback with --debug."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from gated import __version__
from gated.cli import data as cli_data
from gated.cli import db as cli_db
from gated.cli import hub as cli_hub
from gated.cli import passes as cli_pass
from gated.cli import report as cli_report
from gated.cli import status as cli_status
from gated.errors import ConfigError, GatedError, RegistryImportError
from gated.notify import JournalFormatter, LogFormatter, stderr_is_journal

if TYPE_CHECKING:
    from gated.config import Config

log = logging.getLogger("gated")


def setup_logging(debug: bool) -> None:
    """Log to stderr, one line per message; under systemd without timestamps of our own."""
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format=fmt, stream=sys.stderr, force=True
    )
    # journald reads "<3>" as the priority: errors show red in journalctl -p err.
    formatter = JournalFormatter(fmt) if stderr_is_journal() else LogFormatter(fmt)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def load(path: str, overrides: dict[str, Any] | None = None) -> Config:
    """Load a config file (the config module is imported here, when a command needs it)."""
    from gated.config import load_config

    return load_config(path, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    """``gated run -c FILE``: the daemon in the foreground."""
    from gated.app import App
    from gated.describe import describe_event

    config = load(args.config)
    app = App(config)
    app.install_signal_handlers()
    app.controller.observers.append(lambda e: log.info("%s", describe_event(e)))
    return app.run()


def cmd_check_config(args: argparse.Namespace) -> int:
    """``gated check-config -c FILE``: exit 0, or 2 with one line per problem."""
    load(args.config)
    print(f"{args.config}: ok")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``gated demo``: simulated hardware, a scripted stream of arrivals (``--hub``: a fleet)."""
    if args.hub:
        from gated.cli.demo_hub import run_hub_demo

        if args.overlay:
            raise GatedError("--overlay is what --hub gives each of its gates, not both at once")
        return run_hub_demo(
            scenario=args.scenario,
            exit_when_done=args.exit_when_done,
            speed=args.speed,
            workdir=args.workdir,
        )
    from gated.cli.demo import run_demo

    return run_demo(
        scenario=args.scenario,
        exit_when_done=args.exit_when_done,
        speed=args.speed,
        workdir=args.workdir,
        overlay=args.overlay,
    )


def cmd_selftest(args: argparse.Namespace) -> int:
    """``gated selftest -c FILE``: check every configured device once."""
    from gated.cli.selftest import format_table, run_selftest

    results = run_selftest(load(args.config), wait_s=args.wait)
    print(format_table(results))
    return 0 if all(c.ok for c in results) else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="gated",
        description="Gate daemon: temperature first, then the pass, person and pass as one.",
    )
    parser.add_argument("--version", action="version", version=f"gated {__version__}")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("-c", "--config", required=True, help="config file (TOML)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="run on simulated hardware with a scripted scenario")
    p.add_argument("--scenario", help="JSON Lines scenario to play instead of the built-in one")
    p.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit 0 once every input is played and every session is settled",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="play the scenario this many times faster (default 1)",
    )
    p.add_argument(
        "--workdir", help="keep the demo's database and keys here (default: a temporary directory)"
    )
    p.add_argument(
        "--hub",
        action="store_true",
        help="a broker, two simulated gates of one site and a hub with its fleet page"
        " on http://127.0.0.1:8090 (needs mosquitto)",
    )
    # What --hub gives each of its gates: a TOML file merged over config/demo.toml.
    p.add_argument("--overlay", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("selftest", help="for installers: check every configured device once")
    p.add_argument("-c", "--config", required=True)
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        help="seconds to wait for a reading from each input device (default 10)",
    )
    p.set_defaults(func=cmd_selftest)

    cli_pass.register(sub)
    cli_data.register(sub)
    cli_db.register(sub)
    cli_report.register(sub)
    cli_status.register(sub)
    cli_hub.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gated`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except GatedError as exc:
        if args.debug:
            raise
        print(f"gated: {exc}", file=sys.stderr)
        # A registry file with a bad row is bad input, like a bad config: fix it, run again.
        return 2 if isinstance(exc, RegistryImportError) else 1
    except KeyboardInterrupt:
        return 1
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"gated: unexpected error: {type(exc).__name__}: {exc} (--debug shows where)",
            file=sys.stderr,
        )
        return 1
