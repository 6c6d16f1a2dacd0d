"""The ``gated keygen`` and ``gated pass issue`` sub-commands."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

from gated.passes import KID_RE, generate_keypair, issue_pass, write_png

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TOML_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``90s``, ``30m``, ``12h``, ``7d`` (a bare number is seconds)."""
    match = _DURATION_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use e.g. 30m, 12h or 7d")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower()]
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"duration {text!r} is shorter than one second")
    return seconds


def parse_time(text: str) -> float:
    """Unix seconds of an ISO 8601 date or time (without an offset: this machine's local time)."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError) as exc:
        raise argparse.ArgumentTypeError(
            f"bad time {text!r}: use ISO 8601, e.g. 2026-03-01T08:00+08:00"
        ) from exc


def _kid(text: str) -> str:
    if not KID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"bad key id {text!r}: use 1-64 of the characters A-Z a-z 0-9 _ . -"
        )
    return text


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def _gate_list(text: str) -> list[str]:
    gates = [g.strip() for g in text.split(",") if g.strip()]
    if not gates:
        raise argparse.ArgumentTypeError("give at least one gate id, e.g. --gates north,south")
    return gates


def _toml_key(name: str) -> str:
    # A '.' in a bare TOML key would make a dotted (nested) key, so quote anything not bare.
    return name if _TOML_BARE_KEY_RE.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def config_line(kid: str, pub_path: Path) -> str:
    """The ``[passes]`` line that makes the daemon trust ``pub_path`` for ``kid``."""
    return f"public_keys = {{ {_toml_key(kid)} = {json.dumps(str(pub_path), ensure_ascii=False)} }}"


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key pair and say how to configure it."""
    key_path, pub_path = generate_keypair(Path(args.out), kid=args.kid)
    key_path, pub_path = key_path.absolute(), pub_path.absolute()
    print(f"private key: {key_path} (keep it secret: it signs passes)")
    print(f"public key:  {pub_path}")
    print("add to the gate's config, under [passes]:")
    print(config_line(args.kid, pub_path))
    return 0


def cmd_pass_issue(args: argparse.Namespace) -> int:
    """Sign a pass, print it, and optionally write its QR image."""
    token = issue_pass(
        Path(args.key),
        kid=args.kid,
        sub=args.sub,
        hh=args.hh,
        col=args.col,
        valid_s=args.valid,
        nbf=args.nbf,
        jti=args.jti,
        gates=args.gates,
        otp=args.otp,
    )
    if args.png is not None:
        write_png(token, Path(args.png))
        print(f"wrote {args.png}", file=sys.stderr)
    print(token)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keygen`` and ``pass issue`` to the ``gated`` command line."""
    keygen = subparsers.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing passes",
        description="Create KID.key (private, mode 0600) and KID.pub in DIR. "
        "Existing files are never overwritten.",
    )
    keygen.add_argument("--out", required=True, metavar="DIR", help="directory for the pair")
    keygen.add_argument(
        "--kid", type=_kid, default="gate", help="key id, also the file name (default: gate)"
    )
    keygen.set_defaults(func=cmd_keygen)

    pass_parser = subparsers.add_parser("pass", help="passes (QR codes)")
    pass_sub = pass_parser.add_subparsers(dest="pass_command", metavar="COMMAND", required=True)
    issue = pass_sub.add_parser(
        "issue",
        help="issue a signed pass",
        description="Sign a pass and print it on stdout as one line.",
    )
    issue.add_argument("--key", required=True, metavar="FILE", help="private key (gated keygen)")
    issue.add_argument(
        "--kid", required=True, type=_kid, help="key id the gates know the public key by"
    )
    issue.add_argument("--sub", required=True, type=_nonempty, metavar="PERSON", help="person id")
    issue.add_argument(
        "--hh", required=True, type=_nonempty, metavar="HOUSEHOLD", help="household id"
    )
    issue.add_argument(
        "--col", required=True, type=_nonempty, metavar="COLOR", help="colour, e.g. green"
    )
    issue.add_argument(
        "--valid",
        type=parse_duration,
        default=86400.0,
        metavar="DURATION",
        help="how long it is valid from --nbf, e.g. 30m, 12h, 7d (default: 24h)",
    )
    issue.add_argument(
        "--nbf",
        type=parse_time,
        default=None,
        metavar="ISO8601",
        help="valid from (default: now); without an offset, local time",
    )
    issue.add_argument(
        "--gates",
        type=_gate_list,
        default=None,
        metavar="G1,G2",
        help="gate ids it is valid at (default: every gate)",
    )
    issue.add_argument("--otp", action="store_true", help="one-time visitor pass")
    issue.add_argument("--jti", type=_nonempty, default=None, metavar="ID", help="pass id")
    issue.add_argument("--png", default=None, metavar="FILE", help="also write the QR image")
    issue.set_defaults(func=cmd_pass_issue)
