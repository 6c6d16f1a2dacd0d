"""``gated run`` with the serial drivers on ptys and the GPIO turnstile on mock pins."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from functools import reduce
from pathlib import Path

from tests.daemon import Daemon

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
    conn = sqlite3.connect(tmp_path / "gated.db")
    rows = conn.execute(
        "SELECT kind, decision FROM events WHERE kind IN ('decision', 'passage') ORDER BY seq"
    ).fetchall()
    conn.close()
    assert rows[0] == ("decision", "granted")
    assert rows.count(("decision", "granted")) == 1
    assert ("passage", None) in rows  # the open window ran out: recorded as not passed
    assert rows[-1] == ("decision", "denied")
