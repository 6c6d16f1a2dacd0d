"""The sim drivers' live feed (``[sim] input``): lines played as they are appended."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.common.base import DriverContext, Reading
from drivers.sim import Feed, Scenario, SimCardReader, SimThermometer, SimTurnstile
from tests.support.daemon import Daemon
from tests.support.gate_process import GateProcess, arrival


class Devices:
    """A card reader, a thermometer and a turnstile on one feed, their readings in a queue."""

    def __init__(self, path: Path, speed: float = 1.0):
        self.readings: queue.Queue[Reading] = queue.Queue()
        self.feed = Feed(path, speed)
        ctx = DriverContext(scenario=Scenario([], speed, self.feed))
        self.devices = [
            SimCardReader("card", self.readings.put, None, ctx),
            SimThermometer("thermometer", self.readings.put, {"offset_c": 0.5}, ctx),
            SimTurnstile("turnstile", self.readings.put, None, ctx),
        ]
        for d in self.devices:
            d.start()

    def next(self, timeout: float = 10.0) -> tuple[str, Any, str]:
        """The next reading that is not a scenario's ``done``: (kind, value, source)."""
        while True:
            r = self.readings.get(timeout=timeout)
            if r.kind != "done":
                return r.kind, r.value, r.source

    def stop(self) -> None:
        for d in self.devices:
            d.stop()


@pytest.fixture
def feed_file(tmp_path: Path) -> Iterator[tuple[Path, Devices]]:
    path = tmp_path / "input.jsonl"
    devices = Devices(path)
    yield path, devices
    devices.stop()


def append(path: Path, *lines: dict[str, Any] | str) -> None:
    with path.open("a", encoding="utf-8") as f:
        for x in lines:
            f.write((x if isinstance(x, str) else json.dumps(x)) + "\n")


def test_each_line_is_played_when_it_is_appended(feed_file: tuple[Path, Devices]) -> None:
    path, dev = feed_file
    # the file does not exist yet: the feed waits for it
    append(path, {"temp": 36.6}, {"card": "0A1B2C3D4E"})
    assert dev.next() == ("temp", 37.1, "thermometer")  # the thermometer's offset applied
    assert dev.next() == ("card", "0A1B2C3D4E", "card")
    assert dev.readings.empty()
    append(path, {"passage": True})
    assert dev.next() == ("passage", True, "turnstile")
    # a line cut in two writes is played once whole
    with path.open("a") as f:
        f.write('{"card": "11223')
        f.flush()
        time.sleep(0.05)  # the feed reads the first half meanwhile, and must not play it
        assert dev.readings.empty()
        f.write('34455"}\n')
    assert dev.next() == ("card", "1122334455", "card")
    assert dev.feed.played == 4 and dev.feed.refused == 0


def test_t_is_seconds_after_the_line_is_read_in_order(feed_file: tuple[Path, Devices]) -> None:
    path, dev = feed_file
    start = time.monotonic()
    append(path, {"t": 0.4, "temp": 36.5}, {"t": 0.1, "card": "0A1B2C3D4E"})
    assert dev.next()[0] == "temp"
    took = time.monotonic() - start
    assert dev.next()[0] == "card"  # never before the line before it
    assert took >= 0.4


def test_a_bad_line_is_refused_counted_and_the_next_played(
    feed_file: tuple[Path, Devices], caplog: pytest.LogCaptureFixture
) -> None:
    path, dev = feed_file
    append(
        path,
        "not json",
        {"card": 12},
        {"qr": "no qr reader is sim here"},
        {"temp": 36.6, "card": "both"},
        "# a comment",
        {"card": "0A1B2C3D4E"},
    )
    assert dev.next() == ("card", "0A1B2C3D4E", "card")
    assert dev.feed.refused == 4
    text = caplog.text
    assert f"{path}:1: not JSON" in text
    assert f"{path}:2: card: wrong type int" in text
    assert f"{path}:3: no sim driver plays 'qr'" in text
    assert f"{path}:4: expected exactly one of" in text
    assert "no qr reader is sim here" not in text  # a refused value is never logged


def test_a_truncated_file_is_read_again_from_its_start(feed_file: tuple[Path, Devices]) -> None:
    path, dev = feed_file
    append(path, {"card": "AAAA0001"}, {"card": "AAAA0002"})
    assert [dev.next()[1] for _ in range(2)] == ["AAAA0001", "AAAA0002"]
    path.write_text(json.dumps({"card": "BBBB"}) + "\n")
    assert dev.next() == ("card", "BBBB", "card")


def test_a_fifo_is_read_writer_after_writer(tmp_path: Path) -> None:
    path = tmp_path / "input.fifo"
    os.mkfifo(path)
    dev = Devices(path)
    try:
        for uid in ("C1", "C2"):
            with path.open("w") as f:  # opens once the feed has the FIFO open for reading
                f.write(json.dumps({"card": uid}) + "\n")
            assert dev.next() == ("card", uid, "card")
    finally:
        dev.stop()
    assert not any(t.name == "sim-input" for t in threading.enumerate())


def test_a_running_gate_decides_what_is_presented_when_it_is(tmp_path: Path) -> None:
    gate = GateProcess(tmp_path, feed=True).start()
    try:
        assert not [e for e in gate.ledger() if e["kind"] == "decision"]
        gate.present(arrival(0, 36.5, "0A1B2C3D4E"))
        d = gate.wait_event(lambda e: e["kind"] == "decision", "a decision")
        assert d["decision"] == "granted" and d["person"]["id"] == "P1"
        gate.present(arrival(0, 38.5, "1122334455"))
        f = gate.wait_event(lambda e: e["kind"] == "decision" and e["seq"] > d["seq"], "another")
        assert f["decision"] == "denied" and "fever" in f["reasons"]
        # a restart starts from an empty feed: nothing presented before is played again
        gate.stop()
        gate.start()
        gate.present(arrival(0, 36.5, "1122334455"))
        g = gate.wait_event(lambda e: e["kind"] == "decision" and e["seq"] > f["seq"], "a third")
        assert g["person"]["id"] == "P2"
        decisions = [e for e in gate.ledger() if e["kind"] == "decision"]
        assert [e["person"]["id"] for e in decisions] == ["P1", "P2", "P2"]
    finally:
        gate.close()


def test_the_feed_never_ends_so_exit_when_done_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gated.toml"
    config.write_text(
        '[gate]\nid = "g1"\nsite = "s1"\n[turnstile]\ndriver = "sim"\n'
        f'[sim]\ninput = "{tmp_path / "in.jsonl"}"\nexit_when_done = true\n'
    )
    check = Daemon("check-config", "-c", str(config))
    assert check.finish(timeout=60) == 2
    assert "sim.exit_when_done: not with sim.input, which never ends" in check.output()
