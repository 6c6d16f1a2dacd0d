"""Bench: an RDM6300 frame written on a pty until the relay pin changes.

The whole gate runs in this process: the RDM6300 driver reading a pty, the
controller deciding and committing to SQLite with ``synchronous=FULL``, and the GPIO
turnstile on gpiozero's MockFactory. Each presentation is a new card (so the reader's
debounce does not hide it); the relay is pulsed (``pulse_ms``), so it drops by itself
before the next card. Prints p50/p99 over the presentations against the goal:
p99 under 5 ms, a third of the 14.6 ms the 14-byte frame takes on the wire at 9600 baud.

    .venv/bin/python bench/credential_to_relay.py [--presentations 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from drivers.common.gpio import pin_factory
from drivers.rdm6300 import encode_frame
from gated.app import App
from gated.config import config_from_dict
from gated.registry import Person

GOAL_P99_MS = 5.0
WIRE_MS = 14 * 10 / 9600 * 1000  # 14 bytes, 10 bits each (8N1), at 9600 baud


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def wait_pin(pin: object, state: bool, timeout: float = 2.0) -> float:
    deadline = time.perf_counter() + timeout
    while bool(pin.state) != state:  # type: ignore[attr-defined]
        now = time.perf_counter()
        if now > deadline:
            raise TimeoutError(f"relay pin never went {'high' if state else 'low'}")
        time.sleep(0.00005)
    return time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presentations", type=int, default=1000)
    args = parser.parse_args()
    n = args.presentations
    tmp = tempfile.TemporaryDirectory(prefix="gated-bench-")
    work = Path(tmp.name)
    master, slave = os.openpty()
    port = os.ttyname(slave)
    config = config_from_dict(
        {
            "gate": {"id": "g1", "site": "s1"},
            "storage": {"path": str(work / "bench.db")},
            "hardware": {"pin_factory": "mock"},
            "status": {"listen": ""},
            "policy": {"require_temperature": False},
            "card": {"driver": "rdm6300", "port": port, "debounce_s": 1.0},
            "turnstile": {"driver": "gpio", "relay_pin": 17, "pulse_ms": 5, "open_s": 0.5},
        },
        work / "bench.toml",
    )
    app = App(config)
    uids = [f"{i:010X}" for i in range(1, n + 1)]
    app.registry.apply(
        [Person(f"P{i}", f"Person {i}", household=f"H{i}", color="green") for i in range(n)],
        {uid: f"P{i}" for i, uid in enumerate(uids)},
        "2026-01-01T00:00:00Z",
    )
    factory = pin_factory("mock")
    relay = factory.pin(17)
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    time.sleep(0.5)  # let the reader open the pty before the first frame
    latencies: list[float] = []
    try:
        for uid in uids:
            data = encode_frame(uid)
            t0 = time.perf_counter()
            os.write(master, data)
            t1 = wait_pin(relay, True)
            latencies.append((t1 - t0) * 1000)
            wait_pin(relay, False)
    finally:
        app.stop_event.set()
        runner.join(timeout=5)
        os.close(master)
        os.close(slave)
        tmp.cleanup()
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    print(f"presentations        {n}")
    print(f"frame -> relay p50   {p50:.2f} ms")
    print(
        f"frame -> relay p99   {p99:.2f} ms   (goal < {GOAL_P99_MS} ms: "
        f"{GOAL_P99_MS / p99:.1f}x headroom; the frame itself takes {WIRE_MS:.1f} ms "
        f"on the wire, {WIRE_MS / p99:.1f}x our p99)"
    )
    print(f"max                  {max(latencies):.2f} ms")
    return 0 if p99 < GOAL_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
