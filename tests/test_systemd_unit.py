"""systemd/gated.service: it verifies, scores 4.0 or better, and says what the guide says."""

from __future__ import annotations

import re
from pathlib import Path

from gated.config import StorageConfig
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
UNIT = REPO / "systemd" / "gated.service"
RULES = REPO / "systemd" / "99-gated.rules"
INSTALL = REPO / "docs" / "install.md"
GATE = Unit(UNIT)
values = GATE.values
one = GATE.one


@needs_analyze
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    result = verify(make_root(tmp_path, {"gated.service": UNIT.read_text()}), "gated.service")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("WatchdogSec=", "WatchdogSek=")
    result = verify(make_root(tmp_path, {"gated.service": broken}), "gated.service")
    assert "WatchdogSek" in result.stdout + result.stderr


@needs_analyze
def test_security_exposure_is_4_or_better() -> None:
    figure = exposure(UNIT)
    print(f"systemd-analyze security exposure: {figure}")
    assert figure <= 4.0


@needs_analyze
def test_syscall_filter_lets_clock_synced_read_the_clock_status() -> None:
    # Every name on the line must be one this systemd knows (or it is ignored).
    clock_calls = syscall_set("@clock")
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= clock_calls
    allowed = allowed_syscalls(UNIT.read_text())
    # glibc's adjtimex() is clock_adjtime (clock_adjtime64 on 32-bit ARM).
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= allowed
    # Setting the clock stays filtered (and needs CAP_SYS_TIME, which is dropped).
    assert not {"clock_settime", "clock_settime64", "settimeofday"} & allowed
    assert not syscall_set("@mount") & allowed and "init_module" not in allowed
    assert "openat" in allowed and "sendto" in allowed


@needs_analyze
def test_syscall_filter_check_would_catch_the_clock_line_missing() -> None:
    without = "\n".join(
        line
        for line in UNIT.read_text().splitlines()
        if not (line.startswith("SystemCallFilter=") and "adjtimex" in line)
    )
    assert "adjtimex" not in allowed_syscalls(without)


def test_device_allow_has_no_path_that_may_be_absent() -> None:
    # A /dev path that does not exist (gpiomem on a Pi 5) is a warning at every start;
    # device groups (char-...) that match nothing are skipped quietly.
    for value in values("DeviceAllow"):
        node, _, access = value.partition(" ")
        assert node.startswith("char-"), value
        assert access and set(access) <= set("rwm"), value
    assert "char-*gpiomem* rw" in values("DeviceAllow")


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert re.fullmatch(r"\d+s", one("WatchdogSec")) and int(one("WatchdogSec")[:-1]) >= 10
    assert one("Restart") == "on-failure"
    exec_start = one("ExecStart")
    assert exec_start == "/opt/gated/.venv/bin/gated run -c /etc/gated/gated.toml"
    assert one("ExecStartPre") == exec_start.replace(" run ", " check-config ")


def test_unit_runs_as_its_own_user_with_only_the_device_groups() -> None:
    assert one("User") == "gated" and one("Group") == "gated"
    assert set(one("SupplementaryGroups").split()) == {"gpio", "dialout", "i2c", "video", "audio"}
    assert one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == ""


def test_unit_is_hardened_and_keeps_the_database_in_its_state_directory() -> None:
    assert one("ProtectSystem") == "strict"
    assert one("PrivateTmp") == "yes"
    assert one("DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in values("DeviceAllow")}
    assert {
        "char-gpiochip",
        "char-ttyUSB",
        "char-ttyAMA",
        "char-i2c",
        "char-video4linux",
    } <= allowed
    assert "char-alsa" in allowed
    # ProtectClock's seccomp filter would make adjtimex (clock_synced) fail.
    assert not values("ProtectClock")
    state = one("StateDirectory")
    default_db = StorageConfig().path
    assert default_db.parent == Path("/var/lib") / state
    creds = values("LoadCredential")
    assert creds and all(c.startswith("gated-") for c in creds)


def test_install_guide_and_udev_rules_match_the_unit() -> None:
    guide = INSTALL.read_text()
    for needle in (
        "systemctl enable --now gated",
        "journalctl -u gated",
        "99-gated.rules",
        "/etc/credstore/",
        "/run/credentials/gated.service/",
        "useradd",
        "max_queued_messages",
        "persistence true",
        "$share/",
        "docs/mqtt.md",
    ):
        assert needle in guide, needle
    names = re.findall(r'SYMLINK\+="([^"]+)"', RULES.read_text())
    assert names and all(n.startswith("gated-") for n in names)
    for name in names:
        assert f"/dev/{name}" in guide, name
    for line in directives(RULES.read_text()):
        rule = "=".join(line[1:])
        assert "==" in rule and "SYMLINK+=" in rule, rule


def test_the_journald_drop_in_directory_is_made_before_the_file() -> None:
    guide = INSTALL.read_text()
    made = guide.index("mkdir -p /var/log/journal /etc/systemd/journald.conf.d")
    assert made < guide.index("tee /etc/systemd/journald.conf.d/gated.conf")


def test_gatedctl_runs_for_its_user_with_the_units_credentials() -> None:
    guide = INSTALL.read_text()
    script = heredoc(guide, "/usr/local/bin/gatedctl")
    assert script.startswith("#!/bin/sh\n")
    # Through sudo, so it works for the installer's own user and for root alike.
    assert "exec sudo systemd-run " in script
    for flag in ("--pipe", "--wait", "--collect", "--property=User=gated"):
        assert flag in script, flag
    for cred in values("LoadCredential"):
        assert f"--property=LoadCredential={cred}" in script, cred
    assert f'"SupplementaryGroups={one("SupplementaryGroups")}"' in script
    # Files it creates in the state directory look like the service's own.
    for key in ("StateDirectory", "StateDirectoryMode", "UMask", "WorkingDirectory"):
        assert f"--property={key}={one(key)} " in script, key
    assert "chmod 0755 /usr/local/bin/gatedctl" in guide
    # The config names the service's credentials; $CREDENTIALS_DIRECTORY maps them.
    assert "$CREDENTIALS_DIRECTORY" in guide
    named = re.findall(r'_file = "/run/credentials/gated\.service/([\w-]+)"', guide)
    assert named and set(named) <= set(values("LoadCredential"))


def test_broker_users_are_the_gate_ids_and_the_password_file_is_created_once() -> None:
    guide = INSTALL.read_text()
    gate_part = guide[: guide.index("## 13. The hub")]
    (username,) = re.findall(r'^username = "([^"]+)"', gate_part, re.M)
    users = re.findall(r"mosquitto_passwd (-c )?/etc/mosquitto/passwd (\S+)", guide)
    assert users[0][0] == "-c " and all(not c for c, _ in users[1:])
    assert username in [u for _, u in users[1:]]
    assert "gate.id" in guide and "%u" in guide
    central = guide[guide.index("## 11. The central side") :]
    assert "apt-get install -y mosquitto" in central


@needs_analyze
def test_the_kiosk_unit_verifies_and_lets_the_alarm_sound(tmp_path: Path) -> None:
    guide = INSTALL.read_text()
    kiosk = heredoc(guide, "/etc/systemd/system/gated-kiosk.service")
    units = {"gated.service": UNIT.read_text(), "gated-kiosk.service": kiosk}
    result = verify(
        make_root(tmp_path, units, ("/opt/gated/.venv/bin/gated", "/usr/bin/cage")),
        "gated-kiosk.service",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
    exec_start = " ".join(kiosk.replace("\\\n", " ").split("ExecStart=")[1].splitlines()[0].split())
    assert "--kiosk" in exec_start
    assert "--autoplay-policy=no-user-gesture-required" in exec_start
    assert exec_start.endswith("http://127.0.0.1:8080/")


def test_unit_bounds_files_memory_and_threads() -> None:
    from gated.config import MqttConfig, StatusConfig

    files = int(one("LimitNOFILE"))
    # The screen's connections (from the LAN and from the booth, counted apart) fit
    # with room for the daemon's own files, at the default and at the largest setting
    # that the guide's rule (2 x max_connections + 128 below LimitNOFILE) allows.
    assert 2 * StatusConfig().max_connections + 128 <= files <= 4096
    assert re.fullmatch(r"\d+M", one("MemoryMax"))
    # A registry snapshot of registry_max_bytes is taken whole: parsing one costs about 15
    # times its size (66 MB measured 950 MB at its peak), beside the daemon's ~90 MB. A
    # limit below that would kill the gate at every connect while the snapshot is retained.
    mib = MqttConfig().registry_max_bytes / 2**20
    assert 16 * mib + 256 <= int(one("MemoryMax")[:-1]) <= 4096
    assert 32 <= int(one("TasksMax")) <= 256
