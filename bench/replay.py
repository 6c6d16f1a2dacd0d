"""Bench: what a 10,000-event ``cmd/replay`` costs the gate's own decisions.

The gate is a real ``gated run`` process on a ledger that already holds ``--events``
delivered events (bulk-written in the ledger's own format): the RDM6300 driver reads a
pty this bench holds, the controller decides and commits (``synchronous=FULL``), the
publisher sends the event to a real mosquitto where this bench's client listens. Each
presentation is a new card, written once the previous one's decision has arrived.

First ``--presentations`` with no replay, then as many while replays of seq 1 to
``--events`` run back to back (each asked again as soon as its answer came). Prints,
for both, the gate's own decide latency (``latency_ms.decide``: look-ups and rules)
and a card frame to its decision event at the subscriber, p50/p99, and the ratio with
to without; then the replay's own throughput (events PUBACKed per second, from the
command to its answer). Goal: decide p99 still under bench/decide.py's 2 ms while a
replay runs.

    .venv/bin/python bench/replay.py [--presentations 300] [--events 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import COLUMNS, CONFIG, pct  # the same gate as the latency bench
from drivers.rdm6300 import encode_frame
from gated.clock import iso_utc
from gated.storage import Transaction, connect
from tests.support.daemon import Daemon
from tests.support.mosquitto import Mosquitto

ROOT = "gated/s1/g1"
SEQ = re.compile(rb'"seq":(\d+)')
GOAL_P99_MS = 2.0  # bench/decide.py's goal, which a replay must not break


def bulk_history(db: Path, n: int) -> None:
    """``n`` decision events already delivered (no outbox rows), in one transaction."""
    conn = connect(db)
    with Transaction(conn) as c:
        rows = []
        for seq in range(1, n + 1):
            person = {
                "id": f"H-P{seq % 900}",
                "name": "Zhang Wei",
                "id_number": "320623199001011234",
                "unit": "1-101",
                "household": f"H{seq % 300}",
                "category": "resident",
            }
            e = {
                "kind": "decision",
                "direction": "in",
                "decision": "granted",
                "reasons": [],
                "person": person,
                "credential": {"kind": "card", "ref": "0A1B2C3D4E", "color": "green"},
                "temperature_c": None,
                "readings_c": [],
                "ref": None,
                "guard": None,
                "latency_ms": {"decide": 0.4},
                "id": str(uuid.uuid4()),
                "ts": iso_utc(time.time() - 86400),
                "site": "s1",
                "gate": "g1",
                "clock_synced": True,
                "boot": 0,
                "seq": seq,
            }
            body = json.dumps(e, separators=(",", ":"))
            rows.append((seq, e["id"], e["ts"], "decision", "granted", person["id"], body))
        c.executemany(
            "INSERT INTO events(seq, id, ts, kind, decision, person_id, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        c.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(n + 1),))
    conn.close()


class Central:
    """The central side: listens to ``T/event`` and ``T/cmd_result``, asks for replays."""

    def __init__(self, port: int, history: int):
        self.history = history
        self.decisions: queue.SimpleQueue[tuple[float, float]] = queue.SimpleQueue()
        self.answers: queue.SimpleQueue[tuple[float, dict[str, Any]]] = queue.SimpleQueue()
        self.replayed = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-central")
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"{ROOT}/event", 1), (f"{ROOT}/cmd_result", 1)])
        self.client.loop_start()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.perf_counter()
        if msg.topic.endswith("/cmd_result"):
            self.answers.put((received, json.loads(msg.payload)))
            return
        # Only the seq of a replayed event: the bench's own work must not load the machine.
        seq = SEQ.search(msg.payload)
        if seq is not None and int(seq.group(1)) <= self.history:
            self.replayed += 1
            return
        body = json.loads(msg.payload)
        if body.get("kind") == "decision":
            self.decisions.put((received, float(body["latency_ms"]["decide"])))

    def next_decision(self, timeout: float) -> tuple[float, float]:
        """When the next live decision arrived (perf_counter s) and its decide ms."""
        try:
            return self.decisions.get(timeout=timeout)
        except queue.Empty:
            raise SystemExit(f"bench: no decision event within {timeout:g} s") from None

    def replay(self, req: str, first: int, last: int) -> tuple[float, dict[str, Any]]:
        """Ask for a replay; the seconds until its answer, and the answer."""
        payload = json.dumps({"req": req, "from": first, "to": last}).encode()
        t0 = time.perf_counter()
        self.client.publish(f"{ROOT}/cmd/replay", payload, qos=1)
        try:
            received, answer = self.answers.get(timeout=120)
        except queue.Empty:
            raise SystemExit("bench: no answer to cmd/replay within 120 s") from None
        if not answer.get("ok"):
            raise SystemExit(f"bench: replay refused: {answer}")
        return received - t0, answer

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def present(master: int, central: Central, uids: list[str]) -> tuple[list[float], list[float]]:
    """Each card in turn; frame -> decision at the subscriber (ms), and decide (ms)."""
    end_to_end: list[float] = []
    decide: list[float] = []
    for uid in uids:
        data = encode_frame(uid)
        t0 = time.perf_counter()
        os.write(master, data)
        t1, decide_ms = central.next_decision(timeout=10)
        end_to_end.append((t1 - t0) * 1000)
        decide.append(decide_ms)
    return end_to_end, decide


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presentations", type=int, default=300)
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    n, history = args.presentations, args.events
    tmp = tempfile.TemporaryDirectory(prefix="gated-bench-")
    work = Path(tmp.name)
    broker = Mosquitto(work).start()
    master, slave = os.openpty()
    cfg = work / "gated.toml"
    db = work / "gated.db"
    cfg.write_text(CONFIG.format(db=db, port=os.ttyname(slave), url=broker.url))
    uids = [f"{i:010X}" for i in range(1, 2 * n + 2)]  # the first one warms up
    registry = work / "registry.csv"
    rows = [f"P{i},Person {i},,1-{i},H{i},resident,green,0,{uid}" for i, uid in enumerate(uids)]
    registry.write_text("\n".join([COLUMNS, *rows]) + "\n")
    imported = Daemon("registry", "import", str(registry), "-c", str(cfg))
    if imported.finish(timeout=120) != 0:
        raise SystemExit("bench: registry import failed:\n" + imported.output())
    bulk_history(db, history)
    central = Central(broker.port, history)
    daemon = Daemon("run", "-c", str(cfg))
    replays: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 60
        while True:  # the reader opens the pty on its own thread: until the first decision
            os.write(master, encode_frame(uids[0]))
            try:
                central.decisions.get(timeout=0.5)
                break
            except queue.Empty:
                if time.monotonic() > deadline or daemon.proc.poll() is not None:
                    raise SystemExit("bench: no decision:\n" + daemon.output()) from None
        quiet_e2e, quiet_decide = present(master, central, uids[1 : n + 1])

        def replaying() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                seconds, answer = central.replay(f"bench-{i}", 1, history)
                replays.append((seconds, int(answer["sent"])))

        worker = threading.Thread(target=replaying, daemon=True)
        worker.start()
        while central.replayed < 100:  # the first replay is under way
            time.sleep(0.001)
        busy_e2e, busy_decide = present(master, central, uids[n + 1 :])
        stop.set()
        worker.join(150)
    finally:
        daemon.stop(timeout=20)
        central.close()
        broker.stop()
        os.close(master)
        os.close(slave)
        tmp.cleanup()
    if not replays:
        raise SystemExit("bench: no replay finished while the cards were presented")
    q50, q99 = pct(quiet_decide, 50), pct(quiet_decide, 99)
    b50, b99 = pct(busy_decide, 50), pct(busy_decide, 99)
    qe50, qe99 = pct(quiet_e2e, 50), pct(quiet_e2e, 99)
    be50, be99 = pct(busy_e2e, 50), pct(busy_e2e, 99)
    rates = [sent / seconds for seconds, sent in replays]
    print(f"presentations                  {n} without a replay, {n} with")
    print(f"ledger                         {history} events; each replay asks seq 1..{history}")
    print(f"decide p50/p99, no replay      {q50:.3f} / {q99:.3f} ms")
    print(f"decide p50/p99, replaying      {b50:.3f} / {b99:.3f} ms")
    print(
        f"decide p99 replaying / not     {b99 / q99:.2f}   (goal p99 < {GOAL_P99_MS} ms "
        f"while replaying: {GOAL_P99_MS / b99:.1f}x headroom)"
    )
    print(f"frame -> event p50/p99, none   {qe50:.2f} / {qe99:.2f} ms")
    print(f"frame -> event p50/p99, replay {be50:.2f} / {be99:.2f} ms")
    print(f"frame -> event p99 ratio       {be99 / qe99:.2f}")
    print(
        f"replay throughput              {pct(rates, 50):,.0f} events/s median "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}; {len(replays)} replays of "
        f"{replays[0][1]} events)"
    )
    return 0 if b99 < GOAL_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
