"""Serial devices for the tests: a pty pair behind a udev-like name, and bytes cut in chunks.

A pty pair stands in for a serial device: the driver opens the slave through a
symlink (the stable name a udev rule gives), the test writes into the master; closing
the master is pulling the plug, a new pty behind the same symlink is plugging it back.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

#: Seconds within which a reader unplugged and plugged back is healthy again (the contract).
REPLUG_S = 2.0


class PtyPort:
    """A pty pair whose slave is reached through a symlink, like a udev name."""

    def __init__(self, link: Path):
        self.link = link
        self.master: int | None = None
        self.plug()

    def plug(self) -> None:
        """A new pty behind the same name (the device plugged back in)."""
        master, slave = os.openpty()
        name = os.ttyname(slave)
        os.close(slave)
        tmp = self.link.with_name(self.link.name + ".new")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(name, tmp)
        os.replace(tmp, self.link)
        self.master = master

    def unplug(self) -> None:
        """Close the master: the port is gone for whoever has it open."""
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def write(self, data: bytes) -> None:
        assert self.master is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def close(self) -> None:
        self.unplug()

    stop = close


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the positions ``cuts`` (taken modulo its length), in order."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]
