"""systemd/gated-hub.service: it verifies, is confined past the gate's unit, as the guide says."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.systemd import (
    Unit,
    allowed_syscalls,
    directives,
    exposure,
    heredoc,
    make_root,
    needs_analyze,
    syscall_set,
    verify,
)

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "gated-hub.service"
GATE_UNIT = REPO / "systemd" / "gated.service"
INSTALL = REPO / "docs" / "install.md"
HUB = Unit(UNIT)
GATE = Unit(GATE_UNIT)


def hub_guide() -> str:
    """The hub's section of docs/install.md."""
    guide = INSTALL.read_text()
    section = guide[guide.index("## 13. The hub") :]
    return section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section


@needs_analyze
def test_hub_unit_verifies_cleanly(tmp_path: Path) -> None:
    result = verify(
        make_root(tmp_path, {"gated-hub.service": UNIT.read_text()}), "gated-hub.service"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@needs_analyze
def test_hub_verify_would_catch_a_typo(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("PrivateDevices=", "PrivateDevice=")
    result = verify(make_root(tmp_path, {"gated-hub.service": broken}), "gated-hub.service")
    assert "PrivateDevice" in result.stdout + result.stderr


@needs_analyze
def test_hub_is_more_confined_than_the_gate() -> None:
    hub, gate = exposure(UNIT), exposure(GATE_UNIT)
    print(f"systemd-analyze security exposure: hub {hub}, gate {gate}")
    assert hub <= 2.0 and hub < gate


def test_hub_unit_is_a_notify_service_with_a_watchdog() -> None:
    assert HUB.one("Type") == "notify"
    assert HUB.one("NotifyAccess") == "main"
    watchdog = HUB.one("WatchdogSec")
    assert re.fullmatch(r"\d+s", watchdog) and 10 <= int(watchdog[:-1]) <= 120
    assert HUB.one("Restart") == "on-failure"
    exec_start = HUB.one("ExecStart")
    assert exec_start == "/opt/gated/.venv/bin/gated hub run -c /etc/gated/hub.toml"
    # the same install as a gate's: one clone, one venv
    assert exec_start.split()[0] == GATE.one("ExecStart").split()[0]
    assert HUB.one("ExecStartPre") == exec_start.replace(" run ", " check-config ")
    assert HUB.one("WantedBy", "Install") == "multi-user.target"


def test_hub_runs_as_its_own_user_with_no_device_at_all() -> None:
    assert HUB.one("User") == "gated-hub" and HUB.one("Group") == "gated-hub"
    assert not HUB.values("SupplementaryGroups")
    assert not HUB.values("DeviceAllow")
    assert HUB.one("PrivateDevices") == "yes" and HUB.one("DevicePolicy") == "closed"
    assert HUB.one("CapabilityBoundingSet") == "" and HUB.one("AmbientCapabilities") == ""
    assert HUB.one("NoNewPrivileges") == "yes"


def test_hub_keeps_every_hardening_of_the_gate() -> None:
    # Every yes/strict/invisible the gate sets, the hub sets too (with no devices to
    # reach, PrivateDevices and ProcSubset come on top).
    for key in {k for _, k, _ in _gate_flags()}:
        assert HUB.values(key) == GATE.values(key), key
    assert HUB.one("ProcSubset") == "pid"
    assert HUB.one("PrivateUsers") == "yes"
    assert HUB.one("MemoryDenyWriteExecute") == "yes"
    assert HUB.values("SystemCallFilter") == GATE.values("SystemCallFilter")
    assert HUB.values("RestrictAddressFamilies") == GATE.values("RestrictAddressFamilies")
    assert not HUB.values("ProtectClock")


def _gate_flags() -> list[tuple[str, str, str]]:
    return [
        (s, k, v)
        for s, k, v in directives(GATE_UNIT.read_text())
        if s == "Service" and v in {"yes", "strict", "invisible"}
    ]


@needs_analyze
def test_hub_syscall_filter_reads_the_clock_status_and_cannot_set_it() -> None:
    allowed = allowed_syscalls(UNIT.read_text())
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= allowed
    assert not {"clock_settime", "clock_settime64", "settimeofday"} & allowed
    assert not syscall_set("@mount") & allowed and "init_module" not in allowed
    assert "ptrace" not in allowed
    assert {"openat", "sendto", "accept4", "fdatasync"} <= allowed


def test_hub_keeps_its_store_in_its_state_directory_and_secrets_as_credentials() -> None:
    state = HUB.one("StateDirectory")
    assert state == "gated-hub" and state != GATE.one("StateDirectory")
    assert HUB.one("WorkingDirectory") == f"/var/lib/{state}"
    assert HUB.one("StateDirectoryMode") == "0750" and HUB.one("UMask") == "0027"
    creds = HUB.values("LoadCredential")
    assert set(creds) == {"gated-hub-mqtt-password", "gated-hub-mqtt-key", "gated-hub-web-key"}
    # the guide's config puts the store there and names the unit's credentials only
    guide = hub_guide()
    (database,) = re.findall(r'^database = "sqlite:///([^"]+)"', guide, re.M)
    # four slashes: an absolute path (three would be relative to /etc/gated, the config's)
    assert database.startswith("/") and Path(database).parent == Path("/var/lib") / state
    named = re.findall(r'_file = "/run/credentials/gated-hub\.service/([\w-]+)"', guide)
    assert named and set(named) <= set(creds)


def test_hub_unit_bounds_files_memory_and_threads() -> None:
    assert 1024 <= int(HUB.one("LimitNOFILE")) <= 65536
    memory = HUB.one("MemoryMax")
    assert re.fullmatch(r"\d+M", memory) and 512 <= int(memory[:-1]) <= 8192
    assert 32 <= int(HUB.one("TasksMax")) <= 512


def test_install_guide_has_the_hub_and_its_commands() -> None:
    guide = hub_guide()
    for needle in (
        "sudo cp /opt/gated/systemd/gated-hub.service /etc/systemd/system/",
        "systemctl enable --now gated-hub",
        "journalctl -u gated-hub",
        "/opt/gated/config/hub.example.toml /etc/gated/hub.toml",
        "gated hub check-config -c /etc/gated/hub.toml",
        "hub gates -c /etc/gated/hub.toml",
        "hub registry publish /tmp/residents.csv --site greenfield -c /etc/gated/hub.toml",
        "hub report daily -c /etc/gated/hub.toml",
        "gated hash-pin",
        "useradd",
        "/etc/credstore/gated-hub-mqtt-password",
        "mqtt.md#the-broker-acl-mosquitto",
        'sqlite3 /var/lib/gated-hub/hub.db ".backup',
        "/metrics",
        "/healthz",
        "share_group",
    ):
        assert needle in guide, needle
    # the broker user it creates is the one the ACL names, added to the existing file
    assert re.search(r"mosquitto_passwd /etc/mosquitto/passwd hub\b", guide)
    assert 'username = "hub"' in guide
    assert "user hub\n" in (REPO / "docs" / "mqtt.md").read_text()


def test_hubctl_runs_for_the_hubs_user_with_the_units_credentials() -> None:
    script = heredoc(hub_guide(), "/usr/local/bin/gated-hubctl")
    assert script.startswith("#!/bin/sh\n")
    assert "exec sudo systemd-run " in script
    for flag in ("--pipe", "--wait", "--collect", f"--property=User={HUB.one('User')}"):
        assert flag in script, flag
    for cred in HUB.values("LoadCredential"):
        assert f"--property=LoadCredential={cred}" in script, cred
    assert "SupplementaryGroups" not in script
    for key in ("StateDirectory", "StateDirectoryMode", "UMask", "WorkingDirectory"):
        assert f"--property={key}={HUB.one(key)} " in script, key
    assert script.rstrip().endswith('/opt/gated/.venv/bin/gated "$@"')
    assert "chmod 0755 /usr/local/bin/gated-hubctl" in hub_guide()


# Linux 6.3+ refuses writable-and-executable memory itself (prctl PR_SET_MDWE = 65,
# PR_MDWE_REFUSE_EXEC_GAIN = 1), as MemoryDenyWriteExecute= has systemd do.
MDWE_PROBE = textwrap.dedent(
    """
    import asyncio, ctypes, hashlib, importlib, mmap, pkgutil, sqlite3, ssl, sys, tempfile

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("a writable and executable mapping was allowed: MDWE is not on")
    except OSError:
        pass
    import gated.hub
    for mod in pkgutil.walk_packages(gated.hub.__path__, "gated.hub."):
        importlib.import_module(mod.name)
    import gated.cli, gated.clock, gated.mqtt.link, gated.report
    import paho.mqtt.client, prometheus_client, sqlite_utils
    from aiohttp import web, ClientSession
    from cryptography.hazmat.primitives.asymmetric import ed25519

    gated.clock.clock_status()
    ed25519.Ed25519PrivateKey.generate().sign(b"x")
    hashlib.scrypt(b"pin", salt=b"s" * 16, n=2**14, r=8, p=1)
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(d + "/hub.db")
        db.execute("pragma journal_mode=wal")
        db.execute("create table t(x)")
        db.commit()
    ssl.create_default_context()

    async def main():
        app = web.Application()
        app.router.add_get("/healthz", lambda r: web.json_response({"ok": True}))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        async with ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert (await r.json()) == {"ok": True}
        await runner.cleanup()

    asyncio.run(main())
    print("ok")
    """
)


def test_the_hub_runs_under_memory_deny_write_execute() -> None:
    """What the hub imports and does (web, TLS, SQLite, scrypt, signatures) needs no W+X page."""
    probe = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=120
    )
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip().endswith("ok")
