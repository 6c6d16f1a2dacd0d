"""The fixtures the test files share; what they are built from is in ``tests/support/``.

A test module that defines a fixture of the same name (several define their own ``gate``)
uses its own: pytest takes the nearest definition.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.common.gpio import pin_factory
from tests.support.gate_process import GateProcess
from tests.support.mosquitto import Mosquitto
from tests.support.rig import Rig
from tests.support.screen import ARGS, CHROMIUM, WAIT_MS, expect, need_browser, sync_playwright
from tests.support.serial import PtyPort


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``hardware`` need a real gate's devices: run only with GATED_HARDWARE=1."""
    if os.environ.get("GATED_HARDWARE") == "1":
        return
    skip = pytest.mark.skip(reason="needs real gate hardware (set GATED_HARDWARE=1)")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_stray_log_handlers() -> Iterator[None]:
    """A test that runs ``gated.cli.main.main`` in-process installs a root handler on pytest's
    capture stream; drop it afterwards, or another thread logs into a closed file."""
    yield
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)


@pytest.fixture
def factory() -> Iterator[Any]:
    """gpiozero's MockFactory, with no pin left over from another test."""
    f = pin_factory("mock")
    f.reset()
    yield f
    f.reset()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.conn.close()


@pytest.fixture
def stopper() -> Iterator[list[Any]]:
    """Things with ``stop()`` that the test started; stopped at the end whatever happens."""
    started: list[Any] = []
    yield started
    for thing in started:
        thing.stop()


@pytest.fixture
def pty_port(tmp_path: Path) -> Iterator[PtyPort]:
    """A serial device on a pty, reached as ``tmp_path/ttyGATE``."""
    port = PtyPort(tmp_path / "ttyGATE")
    yield port
    port.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free port, killed at the end."""
    b = Mosquitto(tmp_path).start()
    yield b
    b.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, one per test module."""
    need_browser()
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[GateProcess]:
    """A ``gated run`` process on sim drivers, its screen for the browser tests."""
    g = GateProcess(tmp_path)
    yield g
    g.close()
