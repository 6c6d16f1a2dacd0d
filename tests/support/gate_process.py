"""A gate as a real ``gated run`` process on sim drivers, its status screen on a free port.

The sim drivers play a scenario file the test writes (docs/contracts.md §3 ``[sim]``), timed from
the daemon's start; the registry is imported with ``gated registry import``; the
ledger is read back from the SQLite file. The browser tests drive its screen.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon
from tests.support.gate_config import deep_merge, write_scenario, write_sim_gate
from tests.support.ledger_file import ledger_events, wait_for_event
from tests.support.mosquitto import free_port
from tests.support.status_gate import HASH_G01, HASH_SHARED
from tests.support.waiting import wait_until

COLUMNS = "person_id,name,id_number,unit,household,category,color,verified,card_uid"
#: Registry CSV rows (docs/contracts.md §3): Zhang Wei is green, Li Na yellow (a guard decides).
PEOPLE = (
    "P1,Zhang Wei,320623199001011234,1-101,H1,resident,green,0,0A1B2C3D4E",
    "P2,Li Na,320623198502022345,1-102,H2,resident,yellow,0,1122334455",
)


def arrival(t: float, temp: float | None, card: str | None, passage: bool = False) -> list[Any]:
    """Scenario lines for one person: a temperature, then the card, then (maybe) the passage."""
    lines: list[dict[str, Any]] = []
    if temp is not None:
        lines.append({"t": t, "temp": temp})
    if card is not None:
        lines.append({"t": t + 0.3, "card": card})
    if passage:
        lines.append({"t": t + 1.0, "passage": True})
    return lines


class GateProcess:
    """One gate's config, registry and scenario in ``tmp_path``; started and stopped at will."""

    def __init__(
        self,
        tmp_path: Path,
        people: Sequence[str] = PEOPLE,
        site: str = "s1",
        gate: str = "g1",
        timezone: str = "Asia/Shanghai",
        open_s: float = 2.0,
        mqtt_url: str | None = None,
        host: str = "127.0.0.1",
        direction: str = "in",
        feed: bool = False,
        **sections: Any,
    ):
        """``sections`` are merged over the config (``policy``, ``mqtt``, ``qr``, ...);
        ``feed``: the sim drivers also play ``input.jsonl`` as it grows (``present``)."""
        self.tmp_path = tmp_path
        #: The screen's listen address ("0.0.0.0": every address, reads need a session).
        self.host = host
        self.port = free_port(host)
        self.db = tmp_path / "gated.db"
        self.scenario = tmp_path / "scenario.jsonl"
        #: The live feed (``[sim] input``), emptied at every start; None without ``feed``.
        self.input = tmp_path / "input.jsonl" if feed else None
        if self.input is not None:
            sections = deep_merge({"sim": {"input": str(self.input)}}, sections)
        if mqtt_url:
            sections = deep_merge({"mqtt": {"urls": [mqtt_url]}}, sections)
        self.config = write_sim_gate(
            tmp_path,
            gate={"id": gate, "site": site, "direction": direction, "timezone": timezone},
            policy=deep_merge(
                {"guard_timeout_s": 120, "session_timeout_s": 5}, sections.pop("policy", {})
            ),
            status={
                "listen": f"{host}:{self.port}",
                "guard_pin_hash": HASH_SHARED,
                "lockout_after": 3,
                "lockout_s": 300,
                "language": "zh-CN",
                "guards": {"G01": HASH_G01},
            },
            turnstile={"open_s": open_s},
            **sections,
        )
        self.play([])
        registry = tmp_path / "registry.csv"
        registry.write_text("".join(line + "\n" for line in (COLUMNS, *people)))
        imported = Daemon("registry", "import", str(registry), "-c", str(self.config))
        code = imported.finish(timeout=60)
        assert code == 0, imported.output()
        self.daemon: Daemon | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def play(self, lines: Sequence[dict[str, Any]]) -> None:
        """What the sim drivers play from the next start, ``t`` in seconds from it."""
        write_scenario(self.scenario, lines)

    def start(self) -> GateProcess:
        """``gated run`` until its screen answers ``/healthz``."""
        assert self.daemon is None or self.daemon.proc.poll() is not None
        if self.input is not None:
            self.input.write_text("")  # the feed is read from its start: nothing old again
        daemon = self.daemon = Daemon("run", "-c", str(self.config))

        def up() -> bool:
            if daemon.proc.poll() is not None:
                raise AssertionError("the daemon exited:\n" + daemon.output())
            try:
                return self.get("/healthz")[0] == 200
            except OSError:
                return False

        wait_until(up, what="the daemon's status screen")
        return self

    def stop(self) -> None:
        """SIGTERM; it must exit 0."""
        if self.daemon is not None and self.daemon.proc.poll() is None:
            code = self.daemon.stop()
            assert code == 0, self.daemon.output()

    def kill(self) -> None:
        """SIGKILL: the gate vanishes between two instructions (``kill -9``)."""
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.proc.kill()
            self.daemon.finish(timeout=10)

    def present(self, lines: Sequence[dict[str, Any]]) -> None:
        """Hand the running gate these inputs now (``t``: seconds after they are read)."""
        assert self.input is not None, "a GateProcess made with feed=True"
        with self.input.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(x) + "\n" for x in lines))

    def close(self) -> None:
        """Stop whatever still runs (teardown)."""
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.stop()

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def ledger(self) -> list[dict[str, Any]]:
        """Every committed event, read from the SQLite file."""
        return ledger_events(self.db)

    def wait_event(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first ledger event that ``match`` accepts, waited for."""
        return wait_for_event(self.db, match, what)
