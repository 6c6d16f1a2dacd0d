"""``gated run`` with the serial drivers on ptys and the GPIO turnstile on mock pins."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from functools import reduce
from pathlib import Path

from drivers.common.gpio import pin_factory
from gated.config import load_config
from tests.support.daemon import Daemon
from tests.support.running_app import RunningApp, register_residents
from tests.support.serial import PtyPort
from tests.support.waiting import wait_until

CONFIG = """
[gate]
id = "g1"
site = "s1"

[storage]
path = "{tmp}/gated.db"

[hardware]
pin_factory = "mock"

[status]
listen = ""

[card]
driver = "rdm6300"
port = "{card}"

[qr]
driver = "serial"
port = "{qr}"

[thermometer]
driver = "serial"
port = "{thermo}"

[turnstile]
driver = "gpio"
relay_pin = 17
passage_pin = 27
open_s = 3.0
"""

REGISTRY = (
    "person_id,name,id_number,unit,household,category,color,verified,card_uid\n"
    "P1,Zhang Wei,320623199001011234,1-101,H1,resident,green,false,0A1B2C3D4E\n"
)


def rdm6300_frame(uid: str) -> bytes:
    data = bytes.fromhex(uid)
    checksum = reduce(lambda a, b: a ^ b, data)
    return b"\x02" + uid.encode() + f"{checksum:02X}".encode() + b"\x03"


def pty() -> tuple[int, str]:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    return master, name


def test_card_frame_in_relay_toggles_and_the_ledger_row_is_there(tmp_path: Path) -> None:
    card, card_port = pty()
    qr, qr_port = pty()
    thermo, thermo_port = pty()
    config = tmp_path / "gated.toml"
    config.write_text(CONFIG.format(tmp=tmp_path, card=card_port, qr=qr_port, thermo=thermo_port))
    csv = tmp_path / "people.csv"
    csv.write_text(REGISTRY)
    imported = subprocess.run(
        [sys.executable, "-m", "gated.cli", "registry", "import", str(csv), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr

    daemon = Daemon("--debug", "run", "-c", str(config))
    try:
        daemon.wait_for(lambda lines: any("running" in x for x in lines))
        os.write(thermo, b"36.5\r\n")
        for _ in range(5):  # a held card repeats its frame: one presentation counts once
            os.write(card, rdm6300_frame("0A1B2C3D4E"))
        daemon.wait_for(lambda lines: any("relay energised" in x for x in lines))
        daemon.wait_for(lambda lines: any("relay de-energised" in x for x in lines))
        # Garbage from the QR scanner is a denial, never a grant.
        os.write(thermo, b"36.6\r\n")
        os.write(qr, b"\xff\xfe undecodable\r\n")  # dropped and counted by the scanner
        os.write(qr, b"https://example.com/not-a-pass\r\n")
        daemon.wait_for(lambda lines: any("pass_invalid" in x for x in lines))
    finally:
        daemon.proc.terminate()
        assert daemon.finish() == 0, "\n".join(daemon.lines)
        for fd in (card, qr, thermo):
            os.close(fd)
    rows = decisions_and_passages(tmp_path / "gated.db")
    assert rows[0] == ("decision", "granted", None)
    assert [r for r in rows if r[1] == "granted"] == [rows[0]]
    # nobody can break the beam of a mock pin in the child process: the open window
    # ran out, and the passage after the grant is recorded as not passed
    assert rows[1] == ("passage", None, 0)
    assert rows[-1] == ("decision", "denied", None)


def decisions_and_passages(db: Path) -> list[tuple[str, str | None, int | None]]:
    """(kind, decision, passed) of every decision and passage in the ledger, in seq order."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT kind, decision, json_extract(body, '$.passed') FROM events"
            " WHERE kind IN ('decision', 'passage') ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def test_in_process_a_card_opens_the_relay_and_the_person_passing_is_recorded(
    tmp_path: Path,
) -> None:
    """The same App as ``gated run``, on a thread, so the test can break the passage beam."""
    factory = pin_factory("mock")
    factory.reset()
    ports = {name: PtyPort(tmp_path / f"tty{name}") for name in ("card", "qr", "thermo")}
    config = tmp_path / "gated.toml"
    config.write_text(
        CONFIG.format(
            tmp=tmp_path,
            card=ports["card"].link,
            qr=ports["qr"].link,
            thermo=ports["thermo"].link,
        )
    )
    register_residents(tmp_path / "gated.db")
    gate = RunningApp(load_config(str(config))).start()
    try:
        gate.wait_healthy("card", "qr", "thermometer")
        ports["thermo"].write(b"36.5\r\n")
        for _ in range(5):  # a held card repeats its frame: one presentation counts once
            ports["card"].write(rdm6300_frame("0A1B2C3D4E"))
        grant = gate.wait_event("a grant", kind="decision", decision="granted")
        relay, beam = factory.pin(17), factory.pin(27)
        wait_until(lambda: relay.state, "the relay energised", 10)
        beam.drive_low()  # the person walks through the beam
        beam.drive_high()
        passage = gate.wait_event("the passage", kind="passage", ref=grant["id"])
        assert passage["passed"] is True
        wait_until(lambda: not relay.state, "the relay de-energised", 10)
    finally:
        gate.stop()
        for port in ports.values():
            port.close()
        factory.reset()
    rows = decisions_and_passages(tmp_path / "gated.db")
    assert rows == [("decision", "granted", None), ("passage", None, 1)]
