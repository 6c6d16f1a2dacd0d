"""The gates of one site as real ``gated run`` processes on one real mosquitto (contracts §4b).

    site = Site(tmp_path, {"in": "in", "north": "out", "south": "out"}).start()
    d = site.arrive("north", card=ZHANG_CARD)           # presented now, its decision waited for
    site.wait_known("south", "north", d["seq"])         # south's T/status.peers says it knows
    site.arrive("south", card=ZHANG_MIN_CARD)["reasons"]  # -> ["quota_exceeded"]

Every gate has the same registry (:data:`SITE_PEOPLE`), policy (household quota, hard
anti-passback) and pass key, sim hardware played from its live feed (``[sim] input``),
its status screen on a free port, and reaches the broker through a :class:`Door` of its
own (shut one to cut that gate off alone). A :class:`Collector` watches the site's
status, events, alarms and replays from the start.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gated.passes import generate_keypair, issue_pass
from tests.support.gate_process import PEOPLE, GateProcess
from tests.support.mosquitto import Collector, Door, Mosquitto, command
from tests.support.waiting import wait_until

T = TypeVar("T")

#: Cards of the site's residents (contracts §3 uids).
ZHANG_CARD = "0A1B2C3D4E"  # P1, household H1
LI_CARD = "1122334455"  # P2, H2, yellow: a guard decides
ZHANG_MIN_CARD = "5566778899"  # P3, H1 (Zhang Wei's household)
WANG_CARD = "AABBCCDDEE"  # P4, H3
CHEN_CARD = "0102030405"  # P5, H4
LIU_CARD = "0607080910"  # P6, H5
ZHAO_CARD = "1112131415"  # P7, H6

SITE_PEOPLE = (
    *PEOPLE,
    f"P3,Zhang Min,320623199203031234,1-101,H1,resident,green,0,{ZHANG_MIN_CARD}",
    f"P4,Wang Fang,320623198804041234,2-201,H3,resident,green,0,{WANG_CARD}",
    f"P5,Chen Jie,320623197905051234,2-202,H4,resident,green,0,{CHEN_CARD}",
    f"P6,Liu Yang,320623199506061234,3-301,H5,resident,green,0,{LIU_CARD}",
    f"P7,Zhao Lei,320623199607071234,3-302,H6,resident,green,0,{ZHAO_CARD}",
)

#: One exit per household every three days, hard anti-passback: the site's rules.
SITE_POLICY: dict[str, Any] = {
    "household_quota": {"max": 1, "window_h": 72, "direction": "out"},
    "antipassback": "hard",
    "session_timeout_s": 5,
}


def in_parallel(jobs: Mapping[str, Callable[[], T]]) -> dict[str, T]:
    """Run each job on a thread of its own; their results by name (the first error raised)."""
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


class Site:
    """Gates ``{id: direction}`` of site ``site`` on one broker; started with :meth:`start`."""

    def __init__(
        self,
        tmp_path: Path,
        gates: Mapping[str, str],
        site: str = "s1",
        policy: Mapping[str, Any] | None = None,
        people: Sequence[str] = SITE_PEOPLE,
        broker: Mosquitto | None = None,
        **sections: Any,
    ):
        """``broker``: one already running (another site's), else a new one of its own."""
        self.site = site
        self.own_broker = broker is None
        self.broker = broker or Mosquitto(tmp_path).start()
        self.key_dir = tmp_path / "keys"
        generate_keypair(self.key_dir, "k1")
        self.watch = Collector(
            self.broker.port,
            [
                f"gated/{site}/+/{t}"
                for t in ("status", "event", "alarm", "cmd/replay", "cmd_result")
            ],
            client_id=f"site-watch-{site}",
        )
        self.doors = {g: Door(self.broker.port) for g in gates}
        merged_policy = {**SITE_POLICY, **(policy or {})}

        def build(gate: str, direction: str) -> Callable[[], GateProcess]:
            return lambda: GateProcess(
                tmp_path / gate,
                people=people,
                site=site,
                gate=gate,
                direction=direction,
                mqtt_url=self.doors[gate].url,
                feed=True,
                policy=merged_policy,
                qr={"driver": "sim"},
                passes={"public_keys": {"k1": str(self.key_dir / "k1.pub")}},
                **sections,
            )

        for g in gates:
            (tmp_path / g).mkdir(parents=True, exist_ok=True)
        self.gates = in_parallel({g: build(g, d) for g, d in gates.items()})

    def __getitem__(self, gate: str) -> GateProcess:
        return self.gates[gate]

    def start(self, *names: str) -> Site:
        """Start these gates (default: every one) at once, until each screen answers."""
        in_parallel({g: self.gates[g].start for g in names or self.gates})
        return self

    def issue(self, sub: str, hh: str = "H9", col: str = "green", otp: bool = True) -> str:
        """A pass signed with the site's key, valid from now (a one-time visitor's by default)."""
        return issue_pass(self.key_dir / "k1.key", kid="k1", sub=sub, hh=hh, col=col, otp=otp)

    def last_seq(self, gate: str) -> int:
        """The highest ``seq`` in the gate's ledger (0: none yet)."""
        return max((e["seq"] for e in self.gates[gate].ledger()), default=0)

    def arrive(
        self, gate: str, card: str | None = None, qr: str | None = None, temp: float = 36.5
    ) -> dict[str, Any]:
        """A person at ``gate`` now: a temperature, then 0.3 s later the card or pass; the
        decision it commits, waited for."""
        after = self.last_seq(gate)
        lines: list[dict[str, Any]] = [{"temp": temp}]
        if card is not None:
            lines.append({"t": 0.3, "card": card})
        if qr is not None:
            lines.append({"t": 0.3, "qr": qr})
        self.gates[gate].present(lines)
        return self.gates[gate].wait_event(
            lambda e: e["seq"] > after and e["kind"] == "decision", f"a decision at {gate}"
        )

    def statuses(self, gate: str) -> list[dict[str, Any]]:
        """Every ``T/status`` the gate published since the site's watch subscribed."""
        topic = f"gated/{self.site}/{gate}/status"
        with self.watch.cond:
            payloads = [p for t, p, _ in self.watch.messages if t == topic and p]
        return [json.loads(p) for p in payloads]

    def peer_view(self, observer: str, peer: str) -> dict[str, Any] | None:
        """What ``observer``'s latest online status says of ``peer``: through, missing, online."""
        for status in reversed(self.statuses(observer)):
            if status.get("state") == "online":
                view: dict[str, Any] | None = (status.get("peers") or {}).get(peer)
                return view
        return None

    def through(self, observer: str, peer: str) -> int:
        """Up to which ``seq`` ``observer`` has taken every event of ``peer``: its
        ``site_peers`` row, read from its SQLite file (0: none yet)."""
        db = self.gates[observer].db
        if not db.exists():
            return 0
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT through FROM site_peers WHERE gate = ?", (peer,)).fetchone()
        except sqlite3.OperationalError:  # no such table yet
            return 0
        finally:
            conn.close()
        return int(row[0]) if row else 0

    def wait_known(self, observer: str, peer: str, seq: int, timeout: float = 10.0) -> int:
        """Until ``observer`` has taken every event of ``peer`` up to ``seq``; its through.

        Read from its peer tables, committed with what the rules learnt from them: the
        status's ``through`` is published with the gate's next status, not at once.
        """
        found: int = wait_until(
            lambda: (through := self.through(observer, peer)) >= seq and through,
            f"{observer} knowing {peer} through seq {seq}",
            timeout=timeout,
        )
        return found

    def wait_view(
        self,
        observer: str,
        peer: str,
        match: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Until ``observer``'s ``T/status.peers`` says of ``peer`` what ``match`` accepts."""

        def seen() -> dict[str, Any] | None:
            view = self.peer_view(observer, peer)
            return view if view is not None and match(view) else None

        found: dict[str, Any] = wait_until(seen, f"{observer}'s status: {what}", timeout=timeout)
        return found

    def command(self, gate: str, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send ``cmd/{name}`` to ``gate`` once it takes commands; its answer, waited for."""
        return command(self.broker.port, f"gated/{self.site}/{gate}", name, payload)

    def replays(self, to: str) -> list[dict[str, Any]]:
        """The ``cmd/replay`` requests the broker carried to gate ``to``."""
        topic = f"gated/{self.site}/{to}/cmd/replay"
        with self.watch.cond:
            return [json.loads(p) for t, p, _ in self.watch.messages if t == topic]

    def restart_broker(self) -> None:
        """The broker stopped and started again on the same port (what it held is gone)."""
        self.broker.stop()
        self.watch.subscribed.clear()
        self.broker.start()
        if not self.watch.subscribed.wait(20):
            raise AssertionError("the site's watch did not subscribe again")

    def close(self) -> None:
        """Stop every gate still running, the watch, the doors and the broker."""
        in_parallel({g: gate.close for g, gate in self.gates.items()})
        self.watch.close()
        for door in self.doors.values():
            door.close()
        if self.own_broker:
            self.broker.kill()
