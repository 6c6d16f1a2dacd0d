"""Logging fit for journald: priorities, no timestamps of our own, no personal data."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gated.cli.main import main
from gated.notify import JournalFormatter, priority, stderr_is_journal
from tests.support.gate_config import write_sim_gate

SNIPPET = """
import logging, sys
from gated.cli.main import setup_logging
setup_logging(debug=True)
log = logging.getLogger("gated.test")
log.debug("d"); log.info("i"); log.warning("w"); log.error("e"); log.critical("c")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
"""

STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def run_logging(tmp_path: Path, env_extra: dict[str, str], journal: bool = False) -> list[str]:
    """Run SNIPPET with stderr in a file; ``journal``: JOURNAL_STREAM names that file."""
    err = tmp_path / "stderr.txt"
    err.touch()
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env.update(env_extra)
    if journal:
        st = err.stat()
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    with err.open("w") as stream:
        subprocess.run(
            [sys.executable, "-c", SNIPPET], stderr=stream, env=env, check=True, timeout=60
        )
    return err.read_text().splitlines()


def test_under_journald_every_line_carries_its_priority(tmp_path: Path) -> None:
    lines = run_logging(tmp_path, {"INVOCATION_ID": "abc"}, journal=True)
    assert lines[:5] == [
        "<7>DEBUG gated.test: d",
        "<6>INFO gated.test: i",
        "<4>WARNING gated.test: w",
        "<3>ERROR gated.test: e",
        "<2>CRITICAL gated.test: c",
    ]
    # The traceback's lines are entries of their own in the journal: each one an error.
    assert lines[5] == "<3>ERROR gated.test: failed"
    assert len(lines) > 7 and all(line.startswith("<3>") for line in lines[5:])
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"
    assert not any(STAMP.search(line) for line in lines)


def test_in_a_terminal_lines_have_timestamps_and_no_priority(tmp_path: Path) -> None:
    lines = run_logging(tmp_path, {})
    assert STAMP.match(lines[0]) and lines[0].endswith("DEBUG gated.test: d")
    assert not any(line.startswith("<") for line in lines)


def test_under_systemd_with_stderr_elsewhere_no_prefix(tmp_path: Path) -> None:
    # StandardError=file:... : no journal, so no "<N>", but systemd still stamps nothing.
    lines = run_logging(tmp_path, {"INVOCATION_ID": "abc"})
    assert lines[0] == "DEBUG gated.test: d"
    stale = run_logging(tmp_path, {"JOURNAL_STREAM": "1:2"})  # inherited, not our stderr
    assert stale[0] == "DEBUG gated.test: d"


def test_priorities_and_the_stream_check(tmp_path: Path) -> None:
    assert [priority(n) for n in (5, 10, 20, 25, 30, 40, 50, 60)] == [7, 7, 6, 6, 4, 3, 2, 2]
    f = tmp_path / "s"
    f.touch()
    st = f.stat()
    with f.open() as stream:
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "0:0"}, stream.fileno())
        assert not stderr_is_journal({}, stream.fileno())
    record = logging.LogRecord("gated.x", logging.WARNING, __file__, 1, "a%s", ("\nb",), None)
    assert JournalFormatter().format(record) == "<4>WARNING gated.x: a\\nb"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    lines = JournalFormatter().format(record).splitlines()  # a traceback: a line each
    assert lines[0] == "<4>WARNING gated.x: a\\nb" and lines[-1] == "<4>ValueError: boom"
    assert len(lines) > 2 and all(line.startswith("<4>") for line in lines)


INJECTION = """
import logging
from gated.cli.main import setup_logging
setup_logging(debug=False)
log = logging.getLogger("gated.mqtt.commands")
log.warning("command %s refused", "x\\nINFO gated: #7 GRANTED\\r\\x1b[2K\\u2028z")
log.info("name %s", "张伟 ok")
"""


@pytest.mark.parametrize("journal", [True, False])
def test_a_value_with_newlines_stays_on_its_line(tmp_path: Path, journal: bool) -> None:
    """A value from outside (an MQTT req, a topic) cannot forge a line of the gate's log."""
    err = tmp_path / "stderr.txt"
    err.touch()
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    if journal:
        st = err.stat()
        env.update(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", INVOCATION_ID="abc")
    with err.open("w") as stream:
        subprocess.run(
            [sys.executable, "-c", INJECTION], stderr=stream, env=env, check=True, timeout=60
        )
    lines = err.read_text().splitlines()
    prefix = "<4>" if journal else ""
    assert len(lines) == 2, lines
    escaped = "x\\nINFO gated: #7 GRANTED\\r\\x1b[2K\\u2028z"
    assert lines[0].endswith(f"{prefix}WARNING gated.mqtt.commands: command {escaped} refused")
    assert lines[1].endswith("INFO gated.mqtt.commands: name 张伟 ok")


REGISTRY = (
    "person_id,name,id_number,unit,household,category,color,verified,card_uid\n"
    "P1,Zhang Wei,320623199001011234,1-101,H1,resident,green,0,0A1B2C3D4E\n"
)


def test_the_daemon_logs_to_the_journal_without_personal_data(tmp_path: Path) -> None:
    inputs = [
        {"t": 0.0, "temp": 36.6},
        {"t": 0.4, "card": "0A1B2C3D4E"},
        {"t": 1.0, "passage": True},
        {"t": 2.0, "temp": 38.2},
        {"t": 2.2, "temp": 38.3},
        {"t": 2.6, "card": "FF00FF00FF"},
    ]
    config = write_sim_gate(
        tmp_path,
        inputs,
        gate={"timezone": "Asia/Shanghai"},
        turnstile={"open_s": 1.0},
        sim={"exit_when_done": True, "speed": 4.0},
    )
    csv = tmp_path / "registry.csv"
    csv.write_text(REGISTRY)
    assert main(["registry", "import", str(csv), "-c", str(config)]) == 0

    err = tmp_path / "journal.txt"
    err.touch()
    st = err.stat()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", INVOCATION_ID="abc")
    with err.open("w") as stream:
        code = subprocess.run(
            [sys.executable, "-m", "gated.cli", "run", "-c", str(config)],
            stderr=stream,
            env=env,
            timeout=120,
        ).returncode
    text = err.read_text()
    assert code == 0, text
    lines = text.splitlines()
    assert all(re.match(r"<[2-7]>", line) for line in lines), text
    assert not any(STAMP.search(line) for line in lines)
    assert any(line.startswith("<6>INFO gated: ") and "GRANTED" in line for line in lines), text
    assert any("FEVER" in line for line in lines), text
    for secret in ("Zhang Wei", "320623199001011234", "0A1B2C3D4E", "FF00FF00FF", "36.6", "38.3"):
        assert secret not in text, secret
