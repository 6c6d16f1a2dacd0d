"""Bench: outbox drain rate after an outage, and what a plain paho client loses.

    .venv/bin/python bench/drain.py [--events 100000] [--compare 20000]

1. ``--events`` events are committed while the broker is out of reach (bulk-written in
   the ledger's own format; the publisher runs and retries against a shut ``Door``),
   then, with a subscriber already in place, the door opens and the publisher drains
   the backlog: prints events/s until the last one reached the subscriber.
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
from gated.mqtt.link import Backoff
from gated.mqtt.publisher import Publisher
from gated.storage import Transaction, connect
from tests.support.mosquitto import Collector, Door, Mosquitto


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


def wait(pred: Any, timeout: float, what: str = "the condition") -> None:
    """Poll ``pred`` until it holds; a bench whose step never happened stops, it does not
    print a figure of something else."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {timeout:g} s")
        time.sleep(0.05)


def restart(broker: Mosquitto, col: Collector) -> None:
    """Start ``broker`` again and wait until ``col`` has subscribed to it again."""
    col.subscribed.clear()  # else the wait below returns at once, on the old subscription
    broker.start()
    if not col.subscribed.wait(30):
        raise SystemExit("bench: the subscriber did not come back")


def drain_rate(work: Path, n: int) -> None:
    broker = Mosquitto(work, name="drain").start()
    door = Door(broker.port)
    door.shut()  # the outage: the gate cannot reach the broker
    db = work / "drain.db"
    last = bulk_append(db, n)
    cfg = config_from_dict(
        {
            "gate": {"id": "g1", "site": "s1"},
            "storage": {"path": str(db)},
            "turnstile": {"driver": "sim"},
            "mqtt": {"urls": [door.url]},
        },
        work / "gated.toml",
    )
    pub = Publisher(cfg, backoff=Backoff(0.05, 0.2))
    pub.start()
    wait(lambda: pub.link.attempts >= 2, 30, "the publisher retrying during the outage")
    col = Collector(broker.port, ["gated/s1/g1/event"])  # subscribed before anything drains
    started = time.perf_counter()
    door.open()
    col.wait_for(lambda m: len(m) >= n, timeout=600)
    elapsed = time.perf_counter() - started
    wait(lambda: pub.backlog() == 0, 60, "the outbox emptied")
    got = seqs(col)
    pub.stop()
    col.close()
    door.close()
    broker.kill()
    print(f"drain: {n} events after an outage in {elapsed:.1f} s = {n / elapsed:,.0f} events/s")
    print("       (through the test's TCP forwarder, which costs a little)")
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
    wait(
        lambda: len([1 for t, _, _ in col.messages if t == "plain/event"]) >= half,
        60,
        "the plain client's first half delivered",
    )
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
    # Both plain clients are dead: what they had not delivered is gone, nothing more can
    # come. Back up and subscribed again, the count is final.
    restart(broker, col)
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

    def gated_seqs() -> set[int]:
        with col.cond:
            return {json.loads(p)["seq"] for t, p, _ in col.messages if t.startswith("gated")}

    wait(lambda: len(gated_seqs()) >= half, 120, "gated's first half delivered")
    broker.stop()
    last = bulk_append(db, n - half)  # events keep happening during the outage
    gate.send_signal(signal.SIGKILL)
    gate.wait()
    restart(broker, col)  # our subscriber is back before the gate restarts
    gate = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: last in gated_seqs(), 180, "gated's last event delivered")
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
