"""Bench: the serial drivers on pty pairs: framing speed, read latency, re-plug time.

Prints, for the RDM6300 framer, frames/s parsed from a held card's stream; for the
RDM6300 driver on a pty, the latency from a frame written to its ``card`` reading
(p50/p99); and for unplug/re-plug cycles of a port behind a stable symlink, the
time from the pull to the ``unhealthy`` report and from the plug to ``healthy``
(p50/max; the contract is a re-plugged reader back within 2 s).

    .venv/bin/python bench/serial_drivers.py [--frames 200000] [--reads 200] [--cycles 12]
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import statistics
import tempfile
import time
from pathlib import Path

from drivers.common.base import Reading
from drivers.rdm6300 import Rdm6300CardReader, Rdm6300Framer, encode_frame

#: Seconds a port stays unplugged in the re-plug cycles, in turn.
AWAY_S = (0.1, 0.5, 1.5, 3.0)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def plug(link: Path) -> int:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    tmp = link.with_name(link.name + ".new")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(name, tmp)
    os.replace(tmp, link)
    return master


def wait(q: queue.Queue[Reading], kind: str, ok: bool | None = None) -> float:
    while True:
        r = q.get(timeout=30)
        if r.kind == kind and (ok is None or r.value.ok is ok):
            return time.monotonic()


def bench_framer(frames: int) -> None:
    stream = encode_frame("62E3086CED") * 64
    f = Rdm6300Framer(1.0)
    t0 = time.perf_counter()
    for _ in range(frames // 64):
        f.feed(stream)
    dt = time.perf_counter() - t0
    n = f.stats["frames"]
    print(f"rdm6300 framer: {n / dt:,.0f} frames/s ({n} frames, {f.stats['cards']} card)")


def bench_driver(reads: int, cycles: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "ttyRDM"
        master = plug(link)
        q: queue.Queue[Reading] = queue.Queue()
        driver = Rdm6300CardReader("card", q.put, {"port": str(link), "debounce_s": 0})
        driver.start()
        try:
            wait(q, "device", True)
            latency = []
            for i in range(reads):
                t0 = time.monotonic()
                os.write(master, encode_frame(f"{i:010X}"))
                latency.append(wait(q, "card") - t0)
            ms = [x * 1000 for x in latency]
            print(
                f"rdm6300 on a pty, frame written -> card reading: p50 {pct(ms, 50):.2f} ms, "
                f"p99 {pct(ms, 99):.2f} ms ({reads} frames)"
            )
            lost, back = [], []
            for i in range(cycles):
                t0 = time.monotonic()
                os.close(master)
                lost.append(wait(q, "device", False) - t0)
                time.sleep(AWAY_S[i % len(AWAY_S)])  # unplugged for a while: backoff grows
                t0 = time.monotonic()
                master = plug(link)
                back.append(wait(q, "device", True) - t0)
            print(
                f"unplug -> unhealthy: p50 {pct(lost, 50) * 1000:.1f} ms, "
                f"max {max(lost) * 1000:.1f} ms; re-plug -> healthy: p50 "
                f"{statistics.median(back) * 1000:.0f} ms, max {max(back) * 1000:.0f} ms "
                f"({cycles} cycles, unplugged {'/'.join(map(str, AWAY_S))} s in turn; "
                "contract: within 2000 ms)"
            )
        finally:
            driver.stop()
            os.close(master)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--cycles", type=int, default=12)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the unplugs would warn on every cycle
    bench_framer(args.frames)
    bench_driver(args.reads, args.cycles)


if __name__ == "__main__":
    main()
