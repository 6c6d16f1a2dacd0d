"""``gated registry``, ``gated ledger export`` and ``gated check-config`` as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gated import __version__
from tests.support.rig import Rig

SCRIPT = Path(sys.executable).with_name("gated")
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gated.example.toml"

HEADER = "person_id,name,id_number,unit,household,category,color,verified,card_uid"
GOOD = f"""{HEADER}
P1,张伟,320623199001011234,1-101,H1,resident,green,false,0a1b2c3d4e
P1,张伟,320623199001011234,1-101,H1,resident,green,false,0A1B2C3D4F
P2,Li Na,320623198502022345,1-102,H2,resident,yellow,true,1122334455
P3,Wang Fang,,2-201,H3,visitor,blue,false,
"""

# The database is named relative to the config file: the commands run from elsewhere.
CONFIG = """\
[gate]
id = "g1"
site = "s1"

[storage]
path = "gated.db"

[turnstile]
driver = "sim"
"""


def gated(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``gated`` console script (or the module, if there is none)."""
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "gated.cli"]
    return subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command prints on stderr."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    out = tmp_path / "elsewhere"
    out.mkdir()
    return out


def make_gate(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gated.toml"
    config.write_text(CONFIG, encoding="utf-8")
    return config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def exported(config: Path, cwd: Path) -> str:
    result = gated("registry", "export", "-c", str(config), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- registry -------------------------------------------------------------------------------


def test_registry_import_prints_counts(tmp_path: Path, cwd: Path) -> None:
    config = make_gate(tmp_path / "gate")
    people = write(tmp_path / "people.csv", GOOD)

    result = gated("registry", "import", str(people), "-c", str(config), cwd=cwd)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"imported 3 persons, 3 cards from {people}\n"
    assert (tmp_path / "gate" / "gated.db").exists()
    rows = list(csv.DictReader(io.StringIO(exported(config, cwd))))
    assert [(r["person_id"], r["name"], r["card_uid"]) for r in rows] == [
        ("P1", "张伟", "0A1B2C3D4E"),
        ("P1", "张伟", "0A1B2C3D4F"),
        ("P2", "Li Na", "1122334455"),
        ("P3", "Wang Fang", ""),
    ]


def test_registry_import_stamps_cards_as_the_ledgers_ts(tmp_path: Path, cwd: Path) -> None:
    config = make_gate(tmp_path / "gate")
    people = write(tmp_path / "people.csv", GOOD)
    assert gated("registry", "import", str(people), "-c", str(config), cwd=cwd).returncode == 0
    conn = sqlite3.connect(tmp_path / "gate" / "gated.db")
    stamps = [r[0] for r in conn.execute("SELECT activated_at FROM cards")]
    conn.close()
    assert len(stamps) == 3
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps), stamps


def test_bad_row_is_one_line_and_nothing_of_the_file_is_imported(tmp_path: Path, cwd: Path) -> None:
    config = make_gate(tmp_path / "gate")
    people = write(tmp_path / "people.csv", GOOD)
    assert gated("registry", "import", str(people), "-c", str(config), cwd=cwd).returncode == 0
    before = exported(config, cwd)

    bad = write(
        tmp_path / "update.csv",
        f"{HEADER}\n"
        "P1,张伟,320623199001011234,9-909,H1,resident,red,false,0A1B2C3D4E\n"
        "P8,Sun Li,,8-801,H8,resident,green,false,8888888888\n"
        "P9,Qian Yu,,9-901,H9,resident,green,perhaps,9999999999\n",
    )
    result = gated("registry", "import", str(bad), "-c", str(config), cwd=cwd)

    assert result.returncode == 2  # bad input, not a runtime failure
    line = one_error_line(result)
    assert f"{bad}:4: verified" in line
    assert result.stdout == ""
    after = exported(config, cwd)
    assert after == before
    assert "P8" not in after and "9-909" not in after


def test_non_utf8_file_is_one_line_naming_the_line(tmp_path: Path, cwd: Path) -> None:
    config = make_gate(tmp_path / "gate")
    gbk = tmp_path / "excel.csv"
    gbk.write_bytes(f"{HEADER}\nP1,张伟,,1-101,H1,resident,green,false,\n".encode("gbk"))

    result = gated("registry", "import", str(gbk), "-c", str(config), cwd=cwd)

    assert result.returncode == 2  # bad input, not a runtime failure
    line = one_error_line(result)
    assert f"{gbk}:2: " in line and "UTF-8" in line
    assert exported(config, cwd).splitlines() == [HEADER + ",active"], "nothing imported"


def test_missing_csv_is_one_line(tmp_path: Path, cwd: Path) -> None:
    config = make_gate(tmp_path / "gate")
    result = gated("registry", "import", str(tmp_path / "nope.csv"), "-c", str(config), cwd=cwd)
    assert result.returncode == 2  # bad input, not a runtime failure
    assert "nope.csv" in one_error_line(result)


def test_registry_export_re_imports(tmp_path: Path, cwd: Path) -> None:
    first = make_gate(tmp_path / "first")
    people = write(tmp_path / "people.csv", GOOD)
    assert gated("registry", "import", str(people), "-c", str(first), cwd=cwd).returncode == 0
    dump = write(tmp_path / "dump.csv", exported(first, cwd))

    second = make_gate(tmp_path / "second")
    result = gated("registry", "import", str(dump), "-c", str(second), cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert exported(second, cwd) == dump.read_text(encoding="utf-8")

    # --out writes the same file.
    out = tmp_path / "out.csv"
    result = gated("registry", "export", "-c", str(second), "--out", str(out), cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == dump.read_text(encoding="utf-8")


# --- ledger export --------------------------------------------------------------------------


@pytest.fixture
def ledger_gate(tmp_path: Path) -> tuple[Path, Rig]:
    """A gate whose ledger holds two sessions three hours apart (the Rig's DB, our config)."""
    rig = Rig(tmp_path)
    try:
        rig.feed("temp", 36.6)
        rig.feed("card", "0A1B2C3D4E")
        rig.feed("passage", True)
        rig.wait(3 * 3600)
        rig.feed("temp", 38.4)
        rig.feed("temp", 38.5)
        rig.feed("card", "1122334455")
        rig.wait(60)
    finally:
        rig.conn.close()
    config = write(tmp_path / "gated.toml", CONFIG)
    return config, rig


def test_ledger_export_jsonl_in_seq_order(ledger_gate: tuple[Path, Rig], cwd: Path) -> None:
    config, rig = ledger_gate
    stored = rig.stored()
    assert {"decision", "passage", "alarm"} <= {e["kind"] for e in stored}

    result = gated("ledger", "export", "-c", str(config), "--format", "jsonl", cwd=cwd)

    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(stored) + 1))
    assert events == stored
    fever = [e for e in events if e["kind"] == "alarm"]
    assert fever and fever[0]["alarm"] == "fever"


def test_ledger_export_csv_in_seq_order(ledger_gate: tuple[Path, Rig], cwd: Path) -> None:
    config, rig = ledger_gate
    stored = rig.stored()

    result = gated("ledger", "export", "-c", str(config), "--format", "csv", cwd=cwd)

    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["seq"]) for r in rows] == [e["seq"] for e in stored]
    assert [r["id"] for r in rows] == [e["id"] for e in stored]
    assert [r["kind"] for r in rows] == [e["kind"] for e in stored]
    granted = next(r for r in rows if r["decision"] == "granted")
    assert (granted["person_id"], granted["credential_kind"], granted["temperature_c"]) == (
        "P1",
        "card",
        "36.6",
    )
    denied = next(r for r in rows if r["decision"] == "denied")
    assert "fever" in denied["reasons"].split()


def export_since(config: Path, cwd: Path, since: str, fmt: str = "jsonl") -> Any:
    result = gated(
        "ledger", "export", "-c", str(config), "--since", since, "--format", fmt, cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    return result


def test_since_filters_by_time(ledger_gate: tuple[Path, Rig], cwd: Path) -> None:
    config, rig = ledger_gate
    stored = rig.stored()
    later = [e["seq"] for e in stored if e["ts"] >= "2026-02-02T04:00:00.000Z"]
    assert 0 < len(later) < len(stored), "the fixture spans the cut"

    for since in ("2026-02-02T04:00:00Z", "2026-02-02T12:00:00+08:00", "2026-02-02T04:00"):
        out = export_since(config, cwd, since).stdout
        assert [json.loads(line)["seq"] for line in out.splitlines()] == later, since

    assert export_since(config, cwd, "2026-02-02").stdout.count("\n") == len(stored)
    assert export_since(config, cwd, "2099-01-01").stdout == ""
    csv_out = export_since(config, cwd, "2099-01-01", "csv").stdout
    assert csv_out.splitlines() == [csv_out.splitlines()[0]], "only the header"
    assert csv_out.startswith("seq,id,ts,kind,")


def test_bad_since_is_one_line_usage_error(ledger_gate: tuple[Path, Rig], cwd: Path) -> None:
    config, _ = ledger_gate
    result = gated("ledger", "export", "-c", str(config), "--since", "yesterday", cwd=cwd)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "--since" in line and "yesterday" in line
    assert result.stdout == ""


# --- check-config, --version ----------------------------------------------------------------


def test_check_config_names_a_typo_by_file_and_key(tmp_path: Path, cwd: Path) -> None:
    config = write(tmp_path / "gated.toml", CONFIG + "opne_s = 3.0\n")
    result = gated("check-config", "-c", str(config), cwd=cwd)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{config}: turnstile.opne_s: unknown key (typo?)" in result.stderr.splitlines()
    assert result.stdout == ""


def test_check_config_accepts_the_example(cwd: Path) -> None:
    result = gated("check-config", "-c", str(EXAMPLE), cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "ok" in result.stdout


def test_check_config_accepts_the_minimal_config(tmp_path: Path, cwd: Path) -> None:
    config = write(tmp_path / "gated.toml", CONFIG)
    assert gated("check-config", "-c", str(config), cwd=cwd).returncode == 0


@pytest.mark.parametrize(
    "command",
    [
        ["check-config"],
        ["registry", "export"],
        ["ledger", "export"],
    ],
)
def test_missing_config_file_is_exit_2_and_one_line(
    tmp_path: Path, cwd: Path, command: list[str]
) -> None:
    missing = tmp_path / "absent.toml"
    result = gated(*command, "-c", str(missing), cwd=cwd)
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith(f"{missing}: ") and "cannot read" in line
    assert not (tmp_path / "gated.db").exists()


def test_version(cwd: Path) -> None:
    result = gated("--version", cwd=cwd)
    assert result.returncode == 0
    assert result.stdout.strip() == f"gated {__version__}"
