"""Guard login: PIN hashes, ``gated hash-pin``, lockout, session lifetime, the config contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gated.config import load_config
from gated.errors import ConfigError
from gated.status.auth import (
    GuardAuth,
    check_pin_text,
    hash_pin,
    is_loopback,
    parse_pin_hash,
    verify_pin,
)

HASH_1234 = hash_pin("1234")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def auth(clock: Clock, **kw: object) -> GuardAuth:
    args: dict[str, object] = {
        "shared_hash": HASH_1234,
        "guard_hashes": {},
        "lockout_after": 5,
        "lockout_gate_after": 20,
        "lockout_s": 300.0,
        "session_s": 3600.0,
        "clock": clock,
    }
    args.update(kw)
    return GuardAuth(**args)  # type: ignore[arg-type]


def test_a_hash_verifies_its_pin_only() -> None:
    assert verify_pin("1234", HASH_1234)
    assert not verify_pin("1235", HASH_1234)
    assert not verify_pin("1234", "scrypt$garbage")
    assert hash_pin("1234") != HASH_1234  # a fresh salt each time
    n, r, p, salt, digest = parse_pin_hash(HASH_1234)
    assert (n, r, p, len(salt), len(digest)) == (2**14, 8, 1, 16, 32)
    assert "1234" not in HASH_1234


@pytest.mark.parametrize(
    "bad", ["", "1234", "scrypt$1$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43, "md5$abc", "scrypt$x"]
)
def test_what_is_not_a_pin_hash(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pin_hash(bad)


def test_pin_text_rules() -> None:
    assert check_pin_text("1234") is None
    assert check_pin_text("123")
    assert check_pin_text("12 34")
    assert check_pin_text("1" * 65)


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "192.168.1.5", "::", "gate.local"):
        assert not is_loopback(host), host


LAN = "192.168.1.50"
BOOTH = "127.0.0.1"


def test_tries_are_taken_before_the_hash_5_per_guard_in_the_window() -> None:
    clock = Clock()
    a = auth(clock)
    assert a.reserve("G01", LAN)
    clock.now += 100
    # Four logins in flight at once (none answered yet) take the other four tries of G01.
    tries = [a.reserve("G01", LAN) for _ in range(4)]
    assert all(tries)
    assert a.reserve("G01", LAN) is None and a.locked("G01", LAN) == 200
    assert a.reserve("G02", LAN) is not None  # another guard id still has its own
    assert a.reserve("G01", "10.0.0.7") is None  # from any other address alike
    clock.now += 199
    assert a.reserve("G01", LAN) is None and a.locked("G01", LAN) == 1
    clock.now += 1.001  # the first try is 5 minutes old: room for one more
    assert a.reserve("G01", LAN) is not None
    assert a.reserve("G01", LAN) is None


def test_refused_tries_do_not_stretch_the_lockout() -> None:
    clock = Clock()
    a = auth(clock)
    for _ in range(5):
        assert a.reserve("G01", LAN)
    for _ in range(30):  # hammering while locked out
        clock.now += 9
        assert a.reserve("G01", LAN) is None
    clock.now += 300 - 270 + 0.001
    assert a.locked("G01", LAN) == 0


def test_20_tries_per_gate_whatever_the_guard_ids_and_addresses() -> None:
    clock = Clock()
    a = auth(clock)
    for n in range(20):
        assert a.reserve(f"X{n}", f"10.0.{n}.1"), n
    assert a.reserve("G01", "10.9.9.9") is None and a.locked("G77", "10.1.1.1") == 300
    # A spray of guard ids keeps no more than the tries of the window.
    for n in range(10_000):
        a.reserve(f"Y{n}", LAN)
    assert sum(len(b.guards) for b in a.budgets.values()) <= 20


def test_a_right_pin_frees_its_own_try_only() -> None:
    clock = Clock()
    a = auth(clock)
    for _ in range(3):
        assert a.reserve("G01", LAN)  # three wrong guesses, kept
    good = a.reserve("G01", LAN)
    assert good is not None
    session = a.right(good)
    assert session.guard == "G01" and a.session(session.sid) is session
    # The right one did not count, the guesses before the login still do: two tries left.
    assert a.reserve("G01", LAN) and a.reserve("G01", LAN)
    assert a.reserve("G01", LAN) is None


def test_the_booth_keeps_its_own_tries_when_the_lan_used_up_its_own() -> None:
    clock = Clock()
    a = auth(clock)
    for n in range(20):
        assert a.reserve("G01" if n < 5 else f"X{n}", f"10.0.0.{n}")
    assert a.reserve("G01", LAN) is None
    # The kiosk on the gate's own Pi: G01 may still log in there, at once.
    for booth in (BOOTH, "127.0.0.2", "::1", "::ffff:127.0.0.1"):
        assert a.locked("G01", booth) == 0, booth
    attempt = a.reserve("G01", BOOTH)
    assert attempt is not None and attempt.booth
    assert a.right(attempt).guard == "G01"
    # A guard who mistypes at the booth is paused there for at most the window.
    for _ in range(5):
        assert a.reserve("G02", BOOTH)
    assert a.locked("G02", BOOTH) == 300
    clock.now += 300.001
    assert a.locked("G02", BOOTH) == 0 and a.locked("G01", LAN) == 0


def test_sessions_end_at_logout_or_after_their_lifetime() -> None:
    clock = Clock()
    a = auth(clock)
    s1 = a.open_session("G01")
    s2 = a.open_session("G01")
    assert a.session(s1.sid) is s1 and s1.csrf and s1.sid != s2.sid
    assert a.session("forged") is None and a.session(None) is None
    a.end(s1.sid)
    assert a.session(s1.sid) is None
    assert a.on_duty("G01")  # still logged in on the other screen
    clock.now += 3601
    assert a.session(s2.sid) is None
    assert [s.guard for s in a.expired()] == ["G01"]
    assert not a.on_duty("G01")


def test_per_guard_pins_and_the_shared_pin() -> None:
    own = hash_pin("9876")
    a = auth(Clock(), guard_hashes={"G01": own})
    assert a.hash_for("G01") == own
    assert a.hash_for("G02") == HASH_1234
    assert not auth(Clock(), shared_hash="").enabled


# ---- gated hash-pin ------------------------------------------------------------------------


def hash_pin_cli(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gated.cli", "hash-pin"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hash_pin_prints_a_hash_that_verifies() -> None:
    result = hash_pin_cli("5678\n")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert printed.startswith("scrypt$") and verify_pin("5678", printed)
    assert "5678" not in result.stdout + result.stderr


def test_hash_pin_refuses_a_short_pin_in_one_line() -> None:
    result = hash_pin_cli("12\n")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "4 to 64" in result.stderr


# ---- the config contract ---------------------------------------------------------------------


def config_problems(tmp_path: Path, status: str) -> list[str]:
    path = tmp_path / "gated.toml"
    path.write_text(f'[gate]\nid = "g1"\nsite = "s1"\n[turnstile]\ndriver = "sim"\n{status}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_config_takes_guards_with_hashes(tmp_path: Path) -> None:
    path = tmp_path / "gated.toml"
    path.write_text(
        '[gate]\nid = "g1"\nsite = "s1"\n[turnstile]\ndriver = "sim"\n'
        f'[status]\nlisten = "0.0.0.0:8080"\n[status.guards]\nG01 = "{HASH_1234}"\n'
    )
    config = load_config(path)
    assert config.status.guards == {"G01": HASH_1234}
    status = config.status
    assert (status.lockout_after, status.lockout_gate_after, status.lockout_s) == (5, 20, 300)


def test_config_refuses_a_bare_pin_for_a_guard(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '[status.guards]\nG01 = "1234"\n')
    assert len(problems) == 1 and ": status.guards.G01: " in problems[0]
    assert "1234" not in problems[0].split(": status.guards.G01: ")[1]


def test_config_refuses_a_bad_guard_id(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, f'[status.guards]\n"G 1" = "{HASH_1234}"\n')
    assert len(problems) == 1 and ": status.guards: " in problems[0]


def test_config_refuses_to_listen_beyond_loopback_without_a_pin(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '[status]\nlisten = "0.0.0.0:8080"\n')
    assert len(problems) == 1 and ": status.listen: " in problems[0]
    assert "guard_pin_hash" in problems[0]


def test_config_refuses_a_hash_that_is_not_one(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, '[status]\nguard_pin_hash = "secret"\n')
    assert len(problems) == 1 and ": status.guard_pin_hash: " in problems[0]


@pytest.mark.parametrize("key", ["lockout_after = 6", "lockout_gate_after = 21", "lockout_s = 299"])
def test_config_keeps_pin_guessing_within_the_contract(tmp_path: Path, key: str) -> None:
    problems = config_problems(tmp_path, f"[status]\n{key}\n")
    assert len(problems) == 1 and f": status.{key.split()[0]}: " in problems[0]


def test_config_refuses_a_short_kiosk_token_without_saying_it(tmp_path: Path) -> None:
    token = tmp_path / "kiosk.token"
    token.write_text("hunter2hunter2\n")
    problems = config_problems(tmp_path, f'[status]\nkiosk_token_file = "{token}"\n')
    assert len(problems) == 1 and ": status.kiosk_token_file: " in problems[0]
    assert "hunter2" not in problems[0] and "openssl rand" in problems[0]


def test_config_wants_both_tls_files_and_fewer_streams_than_connections(tmp_path: Path) -> None:
    cert = tmp_path / "screen.crt"
    cert.write_text("x")
    problems = config_problems(tmp_path, f'[status]\ntls_cert_file = "{cert}"\n')
    assert len(problems) == 1 and ": status.tls_key_file: " in problems[0]
    problems = config_problems(tmp_path, "[status]\nmax_clients = 30\nmax_connections = 30\n")
    assert len(problems) == 1 and ": status.max_clients: " in problems[0]
    problems = config_problems(tmp_path, '[status]\nhost_names = ["evil.example:80/x"]\n')
    assert len(problems) == 1 and ": status.host_names" in problems[0]
