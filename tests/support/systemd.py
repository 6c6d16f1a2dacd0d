"""A unit file read the way systemd reads it, and checked with the real ``systemd-analyze``.

    unit = Unit(REPO / "systemd" / "gated.service")
    unit.one("Type"), unit.values("LoadCredential")
    verify(make_root(tmp_path, {"gated.service": text}), "gated.service")
    exposure(path)            # systemd-analyze security --offline, the overall figure
    allowed_syscalls(text)    # what SystemCallFilter= lets through

Tests that call systemd-analyze carry ``needs_analyze``: skipped where it (or the
system's own units, which ``verify`` resolves dependencies against) is absent.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
SYSTEM_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)
GATED = "/opt/gated/.venv/bin/gated"

needs_analyze = pytest.mark.skipif(
    not Path(ANALYZE).exists() or SYSTEM_UNITS is None,
    reason="systemd-analyze and the system's units are needed (apt-get install systemd)",
)


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every line; keys may repeat."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


class Unit:
    """The directives of one unit file."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def text(self) -> str:
        return self.path.read_text()

    def values(self, key: str, section: str = "Service") -> list[str]:
        """Every value of ``key`` in ``section``, in order."""
        return [v for s, k, v in directives(self.text) if s == section and k == key]

    def one(self, key: str, section: str = "Service") -> str:
        """The value of a key that must be set exactly once."""
        (value,) = self.values(key, section)
        return value


def heredoc(guide: str, target: str) -> str:
    """The text a ``sudo tee TARGET ... <<'EOF'`` block of a guide writes."""
    match = re.search(rf"tee {re.escape(target)} >/dev/null <<'EOF'\n(.*?)\nEOF\n", guide, re.S)
    assert match, target
    return match.group(1) + "\n"


def make_root(
    tmp_path: Path, units: Mapping[str, str], executables: Iterable[str] = (GATED,)
) -> Path:
    """A root for ``--root=``: the system's units, ``units`` (name: text), the executables."""
    assert SYSTEM_UNITS is not None
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
    for exe in executables:
        path = root / exe.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return root


def verify(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of unit ``name`` under ``root``."""
    return subprocess.run(
        [ANALYZE, "verify", "--man=no", f"--root={root}", name],
        capture_output=True,
        text=True,
        timeout=120,
    )


def exposure(path: Path) -> float:
    """The overall exposure figure ``systemd-analyze security --offline`` gives the unit."""
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    pattern = rf"Overall exposure level for {re.escape(path.name)}: (\d+\.\d+)"
    match = re.search(pattern, result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@functools.cache
def syscall_set(name: str) -> frozenset[str]:
    """The system calls of ``@group`` (nested groups expanded), or ``{name}`` for a call."""
    if not name.startswith("@"):
        return frozenset({name})
    result = subprocess.run(
        [ANALYZE, "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            out |= syscall_set(word)
    return frozenset(out)


def allowed_syscalls(unit_text: str) -> set[str]:
    """The calls an allow-list ``SystemCallFilter=`` lets through, merged as systemd does.

    The first line decides the mode (an allow list, which starts from ``@default``);
    after that a plain line adds its calls and a ``~`` line removes them, in order.
    """
    lines = [v for s, k, v in directives(unit_text) if s == "Service" and k == "SystemCallFilter"]
    assert lines and not lines[0].startswith("~"), "expected an allow list"
    allowed = set(syscall_set("@default"))
    for value in lines:
        deny = value.startswith("~")
        names = set().union(*(syscall_set(w) for w in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed
