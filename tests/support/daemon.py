"""Run ``gated`` as a real process and watch the events it logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

GATED = [sys.executable, "-m", "gated.cli"]
EVENT_LINE = re.compile(r"INFO gated: #(\d+) ")


class Daemon:
    """A ``gated`` child process whose stderr lines are collected as they come."""

    def __init__(self, *args: str, cwd: Path | None = None):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [*GATED, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=env,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        """Wait until ``predicate(lines)`` holds; fail with the output after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError("daemon output never matched:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))

    def logged_seqs(self) -> list[int]:
        """The ``seq`` of every event the daemon logged (it logs after the commit)."""
        with self._cond:
            return [int(m.group(1)) for line in self.lines if (m := EVENT_LINE.search(line))]

    def finish(self, timeout: float = 10.0) -> int:
        """Wait for the exit code and the last output."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, as systemd stops it; the exit code (a daemon that hangs is killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.finish(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.finish(timeout=5)
            raise AssertionError("daemon did not stop on SIGTERM:\n" + self.output()) from None

    def output(self) -> str:
        """Everything the daemon printed so far."""
        with self._cond:
            return "\n".join(self.lines)
