"""The App's start and stop: whatever fails on the way, the gate ends locked and closed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gated.app import App
from tests.support.rig import make_config


class BrokenService:
    def start(self) -> None:
        raise RuntimeError("service could not start")

    def stop(self) -> None:
        pass


def test_a_failing_start_still_locks_the_turnstile_and_closes_the_database(
    tmp_path: Path,
) -> None:
    app = App(make_config(tmp_path, status={"listen": ""}))
    app.services.append(BrokenService())
    app.controller.desk.set_mode("free", "test")  # the relay would be held open
    with pytest.raises(RuntimeError, match="could not start"):
        app.run()
    turnstile = app.devices["turnstile"]
    assert turnstile.state == "locked"  # type: ignore[attr-defined]
    with pytest.raises(sqlite3.ProgrammingError):
        app.conn.execute("SELECT 1")
