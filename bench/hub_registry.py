"""Bench: ``gated hub registry publish`` and ``gated hub revoke`` of a large site.

A registry CSV of ``--persons`` people (one card each) is published with the real
command, as a process, to a real mosquitto (its ``message_size_limit`` left at the
default: none), then one card is revoked. Meanwhile a writer stands in for the
running hub's ingest: it takes the hub database's write lock (``BEGIN IMMEDIATE``,
``COMMIT``) every 10 ms and records how long each wait was, so the figure is how long
a command holds the ingest up. Printed: each command's wall time, the snapshot's size,
and the ingest's longest wait and p99 during each. Then what the running hub's
follow-up costs at each online status of a gate already at the site's latest version
(on the ingest's writer thread), against reading the snapshot's body once.

    .venv/bin/python bench/hub_registry.py [--persons 200000]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import pct
from gated.hub.config import load_hub_config
from gated.hub.registry import follow_up
from gated.hub.store import HubStore
from tests.support.gate_process import COLUMNS
from tests.support.mosquitto import Mosquitto

GATED = [sys.executable, "-m", "gated.cli"]


class Writer(threading.Thread):
    """Takes the hub's write lock every 10 ms; the waits, in ms."""

    def __init__(self, db: Path):
        super().__init__(daemon=True)
        self.db = db
        self.waits: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(str(self.db), isolation_level=None, timeout=60)
        while not self.stop.wait(0.01):
            t = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
            self.waits.append((time.perf_counter() - t) * 1000)
        conn.close()


def run(args: list[str], db: Path) -> tuple[float, list[float], str]:
    writer = Writer(db)
    writer.start()
    t = time.perf_counter()
    done = subprocess.run([*GATED, *args], capture_output=True, text=True)
    took = time.perf_counter() - t
    writer.stop.set()
    writer.join()
    if done.returncode != 0:
        raise SystemExit(f"{args[:3]} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return took, writer.waits, done.stdout.strip()


def follow_up_figures(store: HubStore, toml: Path, version: int, n: int = 50) -> None:
    config = load_hub_config(toml)
    now = time.time()
    store.begin()
    store.status("s1", "g1", {"state": "online", "registry_version": version}, now)
    store.commit()
    t = time.perf_counter()
    for _ in range(n):
        follow_up(store, config, "s1", "g1", lambda *a: None, now)
    each = (time.perf_counter() - t) / n * 1000
    t = time.perf_counter()
    for _ in range(n):
        store.registry_latest("s1")
    body = (time.perf_counter() - t) / n * 1000
    print(
        f"follow-up of a gate at the latest version: {each:.2f} ms per status;"
        f" reading the snapshot's body {body:.1f} ms (ratio {body / each:.0f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=int, default=200_000)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work).start()
        try:
            csv = work / "registry.csv"
            with csv.open("w", encoding="utf-8") as f:
                f.write(COLUMNS + "\n")
                for i in range(opts.persons):
                    f.write(
                        f"P{i},Zhang Wei {i},3206231990{i:08d},{i % 30}-{i % 400},H{i // 3},"
                        f"resident,green,0,{i:010X}\n"
                    )
            toml = work / "hub.toml"
            toml.write_text(
                '[hub]\nid = "bench"\ndatabase = "sqlite:///hub.db"\nshare_group = ""\n'
                f'[mqtt]\nurls = ["{broker.url}"]\n'
            )
            db = work / "hub.db"
            HubStore(db).close()
            print(f"{opts.persons} persons, {csv.stat().st_size / 1e6:.1f} MB of CSV")
            for name, cmd in (
                ("publish", ["hub", "registry", "publish", str(csv), "--site", "s1"]),
                ("revoke", ["hub", "revoke", "--site", "s1", "--card", f"{7:010X}"]),
            ):
                took, waits, out = run([*cmd, "-c", str(toml)], db)
                print(f"{name}: {took:.2f} s  ({out.splitlines()[0]})")
                print(
                    f"  ingest's write waits meanwhile: max {max(waits):.0f} ms,"
                    f" p99 {pct(waits, 99):.0f} ms over {len(waits)} writes"
                )
            store = HubStore(db)
            (latest,) = store.registry_history("s1", limit=1)
            print(f"snapshot {latest['version']}: {latest['persons']} persons")
            follow_up_figures(store, toml, latest["version"])
            store.close()
        finally:
            broker.kill()


if __name__ == "__main__":
    main()
