"""gated/clock.py: the kernel's synchronisation status, and what a refused adjtimex means.

The refusal is real: a child process installs a seccomp filter (the kernel's own, as
systemd's SystemCallFilter does) that answers adjtimex and clock_adjtime with EPERM.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gated.clock import FakeClock, clock_status, clock_synced

REPO = Path(__file__).resolve().parent.parent

# (AUDIT_ARCH_*, syscall numbers of adjtimex, clock_adjtime[, clock_adjtime64]).
ARCHES = {
    "x86_64": (0xC000003E, (159, 305)),
    "aarch64": (0xC00000B7, (171, 266)),
    "armv7l": (0x40000028, (124, 372, 405)),
    "armv6l": (0x40000028, (124, 372, 405)),
}

CHILD = """
import ctypes, errno, logging, struct, sys
arch, numbers = {arch!r}, {numbers!r}
# Classic BPF: load the arch, then the syscall number; EPERM for ours, allow the rest.
LD_ABS, JEQ, RET = 0x20, 0x15, 0x06
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM
prog = [(LD_ABS, 0, 0, 4), (JEQ, 0, len(numbers) + 1, arch), (LD_ABS, 0, 0, 0)]
for i, nr in enumerate(numbers):
    prog.append((JEQ, len(numbers) - i, 0, nr))
prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, EPERM)]
raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
buf = ctypes.create_string_buffer(raw)

class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

libc = ctypes.CDLL(None, use_errno=True)
ulong = ctypes.c_ulong
libc.prctl.argtypes = [ctypes.c_int, ulong, ctypes.c_void_p, ulong, ulong]
fprog = Fprog(len(prog), ctypes.addressof(buf))
if libc.prctl(38, 1, None, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
    print("NO-SECCOMP", ctypes.get_errno())
    sys.exit(0)
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
from gated.clock import clock_status, clock_synced
print(clock_status(), clock_status(), clock_synced())
"""


def test_status_and_bool_agree() -> None:
    status = clock_status()
    assert status in ("synced", "unsynced")  # no filter here: the kernel answers
    assert clock_synced() is (status == "synced")


@pytest.mark.skipif(
    platform.machine() not in ARCHES, reason=f"no syscall numbers for {platform.machine()}"
)
def test_refused_adjtimex_is_unknown_reads_unsynchronised_and_is_said_once() -> None:
    arch, numbers = ARCHES[platform.machine()]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(arch=arch, numbers=numbers)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("NO-SECCOMP"):
        pytest.skip(f"this kernel or container refuses seccomp filters: {result.stdout}")
    assert result.stdout.split() == ["unknown", "unknown", "False"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, result.stderr
    assert "EPERM" in warnings[0]
    assert "SystemCallFilter=adjtimex clock_adjtime" in warnings[0]
    assert "clock_synced=false" in warnings[0]


def test_fake_clock_moves_both_readings() -> None:
    clock = FakeClock(start=100.0)
    mono = clock.monotonic()
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic() - mono) == (102.5, 2.5)
