"""``gated hash-pin``: a guard PIN in, its scrypt hash out (for ``[status]`` in the config)."""

from __future__ import annotations

import argparse
import getpass
import sys

from gated.errors import GatedError


def cmd_hash_pin(args: argparse.Namespace) -> int:
    """Read a PIN on stdin (asked twice on a terminal) and print its hash; never echo it."""
    from gated.status.auth import check_pin_text, hash_pin

    if sys.stdin.isatty():
        pin = getpass.getpass("guard PIN: ")
        if getpass.getpass("again: ") != pin:
            raise GatedError("the two PINs differ; nothing printed")
    else:
        pin = sys.stdin.readline().rstrip("\r\n")
    problem = check_pin_text(pin)
    if problem:
        raise GatedError(f"{problem}; nothing printed")
    print(hash_pin(pin))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hash-pin`` to the ``gated`` sub-commands."""
    p = sub.add_parser(
        "hash-pin",
        help="read a guard PIN on stdin, print its hash for status.guard_pin_hash or status.guards",
    )
    p.set_defaults(func=cmd_hash_pin)
