"""The ``gated keygen`` and ``gated pass issue`` sub-commands."""

from __future__ import annotations

import argparse
import stat
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from gated.cli.passes import config_line, parse_duration, parse_time, register
from gated.errors import PassError
from gated.passes import PassVerifier


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gated")
    sub = parser.add_subparsers()
    register(sub)
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    assert run(["keygen", "--out", str(out)]) == 0
    return out


def issue(capsys: pytest.CaptureFixture[str], keydir: Path, *extra: str) -> str:
    capsys.readouterr()
    argv = ["pass", "issue", "--key", str(keydir / "gate.key"), "--kid", "gate"]
    argv += ["--sub", "p-0001", "--hh", "hh-12", "--col", "green", *extra]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert out.count("\n") == 1, "the token is the only line on stdout"
    return out.strip()


# --- keygen -----------------------------------------------------------------------------------


def test_keygen_writes_the_pair_and_prints_the_config_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    assert run(["keygen", "--out", str(out), "--kid", "site1"]) == 0
    printed = capsys.readouterr().out
    key_path, pub_path = out / "site1.key", out / "site1.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert pub_path.is_file()
    assert str(key_path) in printed
    assert str(pub_path) in printed
    assert "[passes]" in printed
    line = f'public_keys = {{ site1 = "{pub_path}" }}'
    assert line in printed.splitlines()


def test_keygen_config_line_is_toml_the_daemon_can_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "my keys"
    assert run(["keygen", "--out", str(out), "--kid", "gate.2026"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    config = tomllib.loads(f"[passes]\n{line}\n")
    # a dotted kid must stay one key, not become a nested table
    assert config == {"passes": {"public_keys": {"gate.2026": str(out / "gate.2026.pub")}}}
    verifier = PassVerifier({kid: Path(p) for kid, p in config["passes"]["public_keys"].items()})
    assert verifier.kids == {"gate.2026"}


def test_keygen_prints_absolute_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["keygen", "--out", "rel"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == f'public_keys = {{ gate = "{tmp_path / "rel" / "gate.pub"}" }}'


def test_keygen_default_kid_is_gate(keydir: Path) -> None:
    assert sorted(p.name for p in keydir.iterdir()) == ["gate.key", "gate.pub"]


def test_keygen_refuses_to_overwrite(keydir: Path) -> None:
    before = (keydir / "gate.key").read_bytes()
    with pytest.raises(PassError, match="already exists"):
        run(["keygen", "--out", str(keydir)])
    assert (keydir / "gate.key").read_bytes() == before


@pytest.mark.parametrize("argv", [["keygen"], ["keygen", "--out", "x", "--kid", "a/b"]])
def test_keygen_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_config_line_escapes_quotes_and_backslashes() -> None:
    line = config_line("gate", Path('/srv/a "b"\\c/gate.pub'))
    assert tomllib.loads(line) == {"public_keys": {"gate": '/srv/a "b"\\c/gate.pub'}}


# --- pass issue -------------------------------------------------------------------------------


def test_pass_issue_prints_a_pass_that_verifies(
    keydir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = int(time.time())
    token = issue(capsys, keydir)
    after = int(time.time())
    verifier = PassVerifier({"gate": keydir / "gate.pub"})
    check = verifier.verify(token, time.time(), "north")
    assert check.ok, check
    claims = check.claims
    assert (claims["sub"], claims["hh"], claims["col"]) == ("p-0001", "hh-12", "green")
    assert before <= claims["iat"] <= after
    assert claims["exp"] - claims["nbf"] == 24 * 3600
    assert "gates" not in claims
    assert "otp" not in claims


def test_pass_issue_options(keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = issue(
        capsys,
        keydir,
        "--valid",
        "30m",
        "--nbf",
        "2026-03-01T08:00:00+08:00",
        "--gates",
        "north, south",
        "--otp",
        "--jti",
        "visit-42",
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    nbf = int(datetime(2026, 3, 1, 0, 0, tzinfo=UTC).timestamp())
    assert claims["nbf"] == nbf
    assert claims["exp"] == nbf + 1800
    assert claims["gates"] == ["north", "south"]
    assert claims["otp"] is True
    assert claims["jti"] == "visit-42"
    verifier = PassVerifier({"gate": keydir / "gate.pub"})
    assert verifier.verify(token, nbf, "south").ok
    assert verifier.verify(token, nbf, "east").reason == "pass_wrong_gate"
    assert verifier.verify(token, nbf + 3600, "north").reason == "pass_expired"


def test_pass_issue_png(tmp_path: Path, keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "pass.png"
    token = issue(capsys, keydir, "--png", str(png))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 500
    assert jwt.get_unverified_header(token)["kid"] == "gate"


def test_pass_issue_missing_key_is_a_runtime_error(tmp_path: Path) -> None:
    argv = ["pass", "issue", "--key", str(tmp_path / "nope.key"), "--kid", "gate"]
    argv += ["--sub", "p", "--hh", "h", "--col", "green"]
    with pytest.raises(PassError, match=r"nope\.key"):
        run(argv)


def test_pass_issue_with_the_public_key_by_mistake(keydir: Path) -> None:
    argv = ["pass", "issue", "--key", str(keydir / "gate.pub"), "--kid", "gate"]
    argv += ["--sub", "p", "--hh", "h", "--col", "green"]
    with pytest.raises(PassError, match="private key"):
        run(argv)


@pytest.mark.parametrize(
    "extra",
    [
        ["--valid", "soon"],
        ["--valid", "0s"],
        ["--valid", "-5m"],
        ["--nbf", "next tuesday"],
        ["--gates", ","],
        ["--kid", "bad kid"],
        ["--sub", " "],
    ],
)
def test_pass_issue_bad_usage_exits_2(extra: list[str]) -> None:
    argv = ["pass", "issue", "--key", "k", "--kid", "gate"]
    argv += ["--sub", "p", "--hh", "h", "--col", "green", *extra]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["pass"],
        ["pass", "issue"],
        ["pass", "issue", "--key", "k", "--kid", "gate", "--sub", "p", "--hh", "h"],
        ["pass", "revoke"],
    ],
)
def test_pass_incomplete_usage_exits_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_time_accepts_z_and_offsets() -> None:
    assert parse_time("2026-03-01T00:00:00Z") == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert parse_time("2026-03-01T08:00+08:00") == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
