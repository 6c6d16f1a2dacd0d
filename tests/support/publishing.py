"""A ledger and a publisher on one file (the test plays the controller), and what arrived."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gated.clock import FakeClock
from gated.ledger import Ledger
from gated.mqtt.link import Backoff
from gated.mqtt.publisher import Publisher
from gated.storage import connect
from tests.support.events import event
from tests.support.rig import make_config

PERSON = {
    "id": "P1",
    "name": "Zhang Wei",
    "household": "H1",
    "id_number": "320623199001011234",
    "unit": "1-101",
    "category": "resident",
}


class Gate:
    """A ledger (the test plays the controller) and a publisher on the same file."""

    def __init__(self, tmp_path: Path, urls: list[str], **mqtt_cfg: Any):
        self.config = make_config(tmp_path, mqtt={"urls": urls, **mqtt_cfg})
        self.conn = connect(self.config.storage.path)
        self.ledger = Ledger(self.conn, site="s1", gate="g1", clock=FakeClock())
        self.ledger.start_boot()
        self.publisher = Publisher(self.config, backoff=Backoff(0.05, 0.5))

    def append(self, n: int) -> None:
        for i in range(n):
            if i % 10 == 9:
                self.ledger.append(event("alarm", alarm="fever", person=dict(PERSON)))
            else:
                self.ledger.append(event("device", device="card", ok=i % 2 == 0))

    def backlog(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self.publisher.stop()
        self.conn.close()


def check_complete(events: list[dict[str, Any]], last: int, start: int = 1) -> None:
    """Every seq 1..last arrived; first arrivals are in seq order; duplicates share the id."""
    first: dict[int, str] = {}
    order = []
    for e in events:
        if e["seq"] in first:
            assert first[e["seq"]] == e["id"]
            continue
        first[e["seq"]] = e["id"]
        order.append(e["seq"])
    assert order == list(range(start, last + 1))


def has_seq(last: int) -> Any:
    """A predicate for :meth:`Collector.wait_for`: an event with ``seq == last`` arrived.

    It looks only at messages it has not seen yet: the collector calls it per message.
    """
    state = {"seen": 0, "found": False}

    def pred(msgs: list[tuple[str, bytes, bool]]) -> bool:
        for t, p, _ in msgs[state["seen"] :]:
            if t.endswith(("/event", "/alarm")) and json.loads(p)["seq"] == last:
                state["found"] = True
        state["seen"] = len(msgs)
        return state["found"]

    return pred
