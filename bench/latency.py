"""Bench: an RDM6300 frame written on a pty until its decision event reaches a consumer.

The gate is a real ``gated run`` process: the RDM6300 driver reads a pty this bench
holds, the controller decides and commits to SQLite (``synchronous=FULL``), and the
publisher sends the event to a real mosquitto, where this bench's own MQTT client is
subscribed to ``T/event``. Each presentation is a new card (so the reader's debounce
does not hide it), written only once the previous one's decision has arrived. Prints
p50/p99/max and the ratio of p99 to the 14.6 ms the 14-byte frame itself takes on the
wire at 9600 baud (goal: a ratio of at most 1).

    .venv/bin/python bench/latency.py [--presentations 500]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.rdm6300 import encode_frame
from tests.support.daemon import Daemon
from tests.support.mosquitto import Mosquitto

WIRE_MS = 14 * 10 / 9600 * 1000  # 14 bytes, 10 bits each (8N1), at 9600 baud
TOPIC = "gated/s1/g1/event"

CONFIG = """\
[gate]
id = "g1"
site = "s1"

[storage]
path = "{db}"

[status]
listen = ""

[policy]
require_temperature = false

[card]
driver = "rdm6300"
port = "{port}"
debounce_s = 1.0

[turnstile]
driver = "sim"
open_s = 0.5

[mqtt]
urls = ["{url}"]
"""

COLUMNS = "person_id,name,id_number,unit,household,category,color,verified,card_uid"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Consumer:
    """A subscriber to ``T/event`` that stamps each decision event as it arrives."""

    def __init__(self, port: int):
        self.decisions: queue.SimpleQueue[float] = queue.SimpleQueue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-consumer")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(TOPIC, qos=1)
        self.client.loop_start()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.perf_counter()
        if json.loads(msg.payload).get("kind") == "decision":
            self.decisions.put(received)

    def next_decision(self, timeout: float) -> float:
        """When the next decision event arrived (perf_counter seconds)."""
        try:
            return self.decisions.get(timeout=timeout)
        except queue.Empty:
            raise SystemExit(f"bench: no decision event within {timeout:g} s") from None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presentations", type=int, default=500)
    args = parser.parse_args()
    n = args.presentations
    tmp = tempfile.TemporaryDirectory(prefix="gated-bench-")
    work = Path(tmp.name)
    broker = Mosquitto(work).start()
    master, slave = os.openpty()
    cfg = work / "gated.toml"
    cfg.write_text(CONFIG.format(db=work / "gated.db", port=os.ttyname(slave), url=broker.url))
    uids = [f"{i:010X}" for i in range(1, n + 2)]  # the first one warms up
    registry = work / "registry.csv"
    rows = [f"P{i},Person {i},,1-{i},H{i},resident,green,0,{uid}" for i, uid in enumerate(uids)]
    registry.write_text("\n".join([COLUMNS, *rows]) + "\n")
    imported = Daemon("registry", "import", str(registry), "-c", str(cfg))
    if imported.finish(timeout=120) != 0:
        raise SystemExit("bench: registry import failed:\n" + imported.output())
    consumer = Consumer(broker.port)
    daemon = Daemon("run", "-c", str(cfg))
    latencies: list[float] = []
    try:
        # The reader opens the pty on its own thread: present the first card until
        # its decision comes back, then the gate is listening.
        deadline = time.monotonic() + 60
        while True:
            os.write(master, encode_frame(uids[0]))
            try:
                consumer.decisions.get(timeout=0.5)
                break
            except queue.Empty:
                if time.monotonic() > deadline or daemon.proc.poll() is not None:
                    raise SystemExit("bench: no decision:\n" + daemon.output()) from None
        for uid in uids[1:]:
            data = encode_frame(uid)
            t0 = time.perf_counter()
            os.write(master, data)
            t1 = consumer.next_decision(timeout=10)
            latencies.append((t1 - t0) * 1000)
    finally:
        daemon.stop(timeout=20)
        consumer.close()
        broker.stop()
        os.close(master)
        os.close(slave)
        tmp.cleanup()
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    print(f"presentations                  {n}")
    print(f"frame -> event at consumer p50 {p50:.2f} ms")
    print(f"frame -> event at consumer p99 {p99:.2f} ms")
    print(f"max                            {max(latencies):.2f} ms")
    print(
        f"p99 / frame on the wire        {p99 / WIRE_MS:.2f}   (the 14-byte frame takes "
        f"{WIRE_MS:.1f} ms at 9600 baud; goal <= 1)"
    )
    return 0 if p99 <= WIRE_MS else 1


if __name__ == "__main__":
    sys.exit(main())
