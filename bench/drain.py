"""Bench: outbox drain rate after an outage, and what a plain paho client loses.

    .venv/bin/python bench/drain.py [--events 100000] [--compare 20000]

1. ``--events`` events are committed while no broker is reachable (bulk-written in the
   ledger's own format), then a real mosquitto comes up and the publisher drains the
   backlog: prints events/s until the last one reached a subscriber.
2. Side by side, the same ``--compare`` events through (a) a plain paho client with no
   outbox (QoS 1, paho's in-memory queue) and (b) ``gated run``; half published with the
   broker up, half during an outage, then the process is killed with SIGKILL during the
   outage, the broker comes back, the process restarts. Prints what each lost.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gated.config import config_from_dict
from gated.ledger import iso_utc
from gated.mqtt_link import Backoff
from gated.publisher import Publisher
from gated.storage import Transaction, connect
from tests.mosquitto import Collector, Mosquitto


def event(seq: int, boot: int = 1) -> dict[str, Any]:
    """A typical decision event, as the ledger stores it."""
    return {
        "kind": "decision",
        "direction": "in",
        "decision": "granted" if seq % 7 else "denied",
        "reasons": [] if seq % 7 else ["fever"],
        "person": {
            "id": f"P{seq % 900}",
            "name": "Zhang Wei",
            "id_number": "320623199001011234",
            "unit": "1-101",
            "household": f"H{seq % 300}",
            "category": "resident",
        },
        "credential": {"kind": "card", "ref": "0A1B2C3D4E", "color": "green"},
        "temperature_c": 36.6,
        "readings_c": [36.6],
        "ref": None,
        "guard": None,
        "latency_ms": {"decide": 0.4},
        "id": str(uuid.uuid4()),
        "ts": iso_utc(time.time()),
        "site": "s1",
        "gate": "g1",
        "clock_synced": True,
        "boot": boot,
        "seq": seq,
    }


def bulk_append(db: Path, n: int) -> int:
    """Commit ``n`` events and their outbox rows (one transaction); returns the last seq."""
    conn = connect(db)
    with Transaction(conn) as c:
        first = int(c.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])
        rows = [event(s) for s in range(first, first + n)]
        c.executemany(
            "INSERT INTO events(seq, id, ts, kind, decision, person_id, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e["seq"],
                    e["id"],
                    e["ts"],
                    "decision",
                    e["decision"],
                    e["person"]["id"],
                    json.dumps(e, separators=(",", ":")),
                )
                for e in rows
            ],
        )
        c.executemany(
            "INSERT INTO outbox(seq, topic) VALUES (?, 'event')", [(e["seq"],) for e in rows]
        )
        c.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(first + n),))
    conn.close()
    return first + n - 1


def seqs(col: Collector) -> set[int]:
    return {e["seq"] for e in col.events()}


def wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def drain_rate(work: Path, n: int) -> None:
    broker = Mosquitto(work, name="drain")
    db = work / "drain.db"
    last = bulk_append(db, n)
    cfg = config_from_dict(
        {
            "gate": {"id": "g1", "site": "s1"},
            "storage": {"path": str(db)},
            "turnstile": {"driver": "sim"},
            "mqtt": {"urls": [broker.url]},
        },
        work / "gated.toml",
    )
    pub = Publisher(cfg, backoff=Backoff(0.05, 0.2))
    pub.start()  # the outage: nothing listens yet
    time.sleep(0.5)
    broker.start()
    col = Collector(broker.port, ["gated/s1/g1/event"])
    started = time.perf_counter()
    col.wait_for(lambda m: len(m) >= n, timeout=600)
    elapsed = time.perf_counter() - started
    wait(lambda: pub.backlog() == 0, 60)
    got = seqs(col)
    pub.stop()
    col.close()
    broker.kill()
    print(f"drain: {n} events after an outage in {elapsed:.1f} s = {n / elapsed:,.0f} events/s")
    print(f"       received {len(got)} distinct, missing {last - len(got)}")


PLAIN = r"""
import json, sys, time, uuid
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, first, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain")
c.connect("127.0.0.1", port); c.loop_start()
for s in range(first, first + n):
    c.publish("plain/event", json.dumps({"seq": s, "id": str(uuid.uuid4())}), qos=1)
print("queued", flush=True)
time.sleep(3600)
"""


def compare(work: Path, n: int) -> None:
    half = n // 2
    broker = Mosquitto(work, name="compare")
    broker.start()
    col = Collector(broker.port, ["plain/event", "gated/s1/g1/event"], persistent=True)

    # (a) a plain paho client: half while up, half during the outage, then SIGKILL
    a = subprocess.Popen(
        [sys.executable, "-c", PLAIN, str(broker.port), "1", str(half)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert a.stdout is not None
    a.stdout.readline()
    wait(lambda: len([1 for t, _, _ in col.messages if t == "plain/event"]) >= half, 60)
    broker.stop()
    b = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PLAIN.replace(
                'c.connect("127.0.0.1", port); ',
                'c.connect("127.0.0.1", port) if False else c.connect_async("127.0.0.1", port); ',
            ),
            str(broker.port),
            str(half + 1),
            str(n - half),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert b.stdout is not None
    b.stdout.readline()
    b.send_signal(signal.SIGKILL)
    b.wait()
    broker.start()
    col.subscribed.wait(30)
    time.sleep(3)
    plain = {json.loads(p)["seq"] for t, p, _ in col.messages if t == "plain/event"}

    # (b) gated run: the same, with the outbox
    db = work / "gate.db"
    cfg = work / "gate.toml"
    cfg.write_text(
        f'[gate]\nid = "g1"\nsite = "s1"\n[storage]\npath = "{db}"\n'
        f'[turnstile]\ndriver = "sim"\n[mqtt]\nurls = ["{broker.url}"]\n'
    )
    bulk_append(db, half)
    cmd = [sys.executable, "-m", "gated.cli", "run", "-c", str(cfg)]
    gate = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(
        lambda: (
            len({json.loads(p)["seq"] for t, p, _ in col.messages if t.startswith("gated")}) >= half
        ),
        120,
    )
    broker.stop()
    last = bulk_append(db, n - half)  # events keep happening during the outage
    gate.send_signal(signal.SIGKILL)
    gate.wait()
    broker.start()
    col.subscribed.wait(30)
    gate = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def gated_seqs() -> set[int]:
        return {json.loads(p)["seq"] for t, p, _ in col.messages if t.startswith("gated")}

    wait(lambda: last in gated_seqs(), 180)
    ours = gated_seqs()
    gate.send_signal(signal.SIGTERM)
    gate.wait(20)
    col.close()
    broker.kill()
    print(f"compare: {n} events, {half} with the broker up, {n - half} during an outage,")
    print("         the publishing process SIGKILLed during the outage, then restarted:")
    print(f"  plain paho client (no outbox): received {len(plain)}, LOST {n - len(plain)}")
    print(
        f"  gated (outbox):                received {len(ours & set(range(1, last + 1)))},"
        f" LOST {last - len(ours & set(range(1, last + 1)))}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--compare", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        drain_rate(work, args.events)
        compare(work, args.compare)


if __name__ == "__main__":
    main()
