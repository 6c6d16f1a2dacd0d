"""Child processes that end with their parent, for ``gated demo --hub``.

Each child runs in its own session, so a Ctrl-C at the terminal reaches the parent alone,
which stops its children in the order it chooses. On Linux each also gets SIGTERM should the
parent die, even by ``kill -9`` (``PR_SET_PDEATHSIG``, set between the fork and the exec). That
is safe only in a parent that runs no thread of its own, as the demo does: nothing can then
hold a lock the child would need before its exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STOP_S = 10.0


def pick_port(preferred: int, taken: set[int]) -> int:
    """``preferred`` if nothing listens there on loopback, else a free port; noted in ``taken``."""
    for want in (preferred, 0):
        with socket.socket() as s:
            # As the servers bind (reuse_address): a port left in TIME_WAIT is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", want))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port
    return pick_port(0, taken)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux for SIGTERM when this process ends (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl
            os._exit(1)

    return preexec


@dataclass
class Part:
    """One child process, by the name its messages give it."""

    name: str
    proc: subprocess.Popen[bytes]
    stop_s: float = STOP_S

    @classmethod
    def spawn(cls, name: str, argv: list[str], stop_s: float = STOP_S, **kwargs: Any) -> Part:
        """Start ``argv`` in its own session, ending with this process; stdin empty."""
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # safe in a parent with no thread (the docstring)
            **kwargs,
        )
        return cls(name, proc, stop_s)

    def exited(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        """SIGTERM, and SIGKILL after ``stop_s``; reaped either way."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_s)
            except subprocess.TimeoutExpired:
                print(f"gated demo: {self.name} did not stop; killed", file=sys.stderr)
                self.proc.kill()
        self.proc.wait()
