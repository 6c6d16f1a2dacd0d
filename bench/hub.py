"""Bench: events a second the hub stores (SQLite, ``synchronous=FULL``), and a gate's
commit to the hub's row.

One real mosquitto (tests/support/mosquitto.py: ``max_inflight_messages 0``, or
``--broker-inflight N``), one real ``gated hub run`` (tests/support/hub.py, its default
shared subscription, MQTT 5), and ``--gates`` simulated gates over ``--sites`` sites,
each publishing valid stamped events (a :class:`gated.events.Decision`, then the
:class:`~gated.events.Passage` of its grant, ...; every gate's ``seq`` gap-free from 1)
at QoS 1 from ``--publishers`` connections (one process each, a bare MQTT 3.1.1 client
writing pre-encoded frames, at most 1000 unacknowledged), as fast as the broker
acknowledges them. The events are built before the clock starts.

1. **Live**: ``--events`` per gate published while the hub runs.
2. **Backlog**: the hub stopped (SIGTERM), as many again published (the broker queues
   them for the hub's persistent session), then the hub started: it drains the queue.

The hub's rate is measured at its database: this bench polls ``max(rowid)`` of
``hub_events`` (the hub's SQLite file, read-only, every 5 ms) and takes the rows stored
from the first poll that saw one of the phase's rows to the first that saw them all.
Then every event is checked stored exactly once: the row count, and each gate's
``through`` and ``highest`` in ``hub_gates`` at its last seq (no ``missing``). Also the
CPU the hub process used per event stored (``/proc/PID/stat``, over the phase; for the
backlog, from the process's start less what a start costs): a figure that holds whatever
else the machine runs meanwhile; and mosquitto's.
``--hubs N`` runs N instances on the one database and shared subscription
(docs/contracts.md §9).

3. **Latency**: a real ``gated run`` gate (site ``lat``, sim hardware, cards through its
   live feed), the same broker and hub. Each card is shown once the hub holds the
   previous decision. Per decision: from the gate's commit to the hub's row, both seen by
   polling the two SQLite files every 2 ms on one thread (resolution about 2 ms, plus the
   time a poll takes); and from the event's ``ts`` (stamped by the gate's ledger just
   before its commit, ms cut) to the hub's row and to the hub's ``received_at`` (when the
   message reached the hub, before its commit). Idle, then while the publishers of part 1
   run again (``--events`` more per gate); only the decisions the gate committed before
   the hub had stored the last of that load count as loaded.

    .venv/bin/python bench/hub.py [--gates 1000] [--sites 20] [--events 50]
        [--publishers 3] [--presentations 100] [--broker-inflight 0] [--hubs 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import pct
from bench.site import people, ts_seconds
from gated.clock import iso_utc
from gated.events import Credential, Decision, Passage, Person
from tests.support.gate_process import GateProcess
from tests.support.hub import HubProcess
from tests.support.mosquitto import Mosquitto

GOAL = 5000  # events/s: a thousand gates at rush hour
PREFIX = "gated"
WINDOW = 1000  # QoS 1 messages a publisher has unacknowledged at most
LAT_SITE, LAT_GATE = "lat", "g1"

Gate = tuple[str, str]


def fleet(gates: int, sites: int) -> list[Gate]:
    """``gates`` (site, gate) ids spread over ``sites`` sites."""
    return [(f"s{i % sites + 1:02d}", f"g{i + 1:04d}") for i in range(gates)]


def build(gates: list[Gate], first: int, last: int) -> list[tuple[str, bytes]]:
    """Every gate's events ``first..last`` as its ledger stamps them, round by round (each
    gate's seq in order): a card's grant at odd seqs, its passage at even ones."""
    person = Person(id="H-P1", name="Zhang Wei", unit="1-101", household="H1", category="resident")
    card = Credential.card("0A1B2C3D4E", "green")
    grant = Decision.verdict(
        direction="in",
        decision="granted",
        reasons=[],
        person=person.model_dump(),
        credential=card,
        temperature_c=36.5,
        readings_c=[36.4, 36.5],
        decide_ms=0.41,
    )
    out = []
    last_grant: dict[Gate, Decision] = {}
    for seq in range(first, last + 1):
        for site, gate in gates:
            header = {
                "id": str(uuid.uuid4()),
                "ts": iso_utc(time.time()),
                "site": site,
                "gate": gate,
                "clock_synced": True,
                "boot": 1,
                "seq": seq,
            }
            prior = last_grant.get((site, gate))
            if seq % 2 == 0 and prior is not None:
                event: Decision | Passage = Passage.of_grant(prior, True).stamped(**header)
            else:
                event = last_grant[(site, gate)] = grant.stamped(**header)
            out.append((f"{PREFIX}/{site}/{gate}/event", event.to_json().encode()))
    return out


def _length(n: int) -> bytes:
    """MQTT's variable-length "remaining length"."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def publish_frame(topic: str, payload: bytes, mid: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH at QoS 1, not retained."""
    body = _text(topic) + struct.pack("!H", mid) + payload
    return b"\x32" + _length(len(body)) + body


def publisher(
    port: int,
    gates: list[Gate],
    first: int,
    last: int,
    ready: Any,
    go: Any,
    results: Any,
    rate: float = 0.0,
) -> None:
    """One connection publishing these gates' events at QoS 1 once ``go`` is set (``rate``
    a second, 0: as fast as the broker acknowledges); puts (start, last PUBACK, count) on
    ``results``. A plain MQTT 3.1.1 client of its own: the frames are encoded before the
    clock starts and written :data:`WINDOW` unacknowledged at most, so that the simulated
    gates cost the machine little beside the hub (paho spends more per message than the
    hub's own checks)."""
    frames = [
        publish_frame(topic, payload, i % 65535 + 1)
        for i, (topic, payload) in enumerate(build(gates, first, last))
    ]
    n = len(frames)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # CONNECT: "MQTT" level 4, clean session, no keepalive
    body = _text("MQTT") + b"\x04\x02\x00\x00" + _text(f"bench-pub-{os.getpid()}")
    sock.sendall(b"\x10" + _length(len(body)) + body)
    if sock.recv(4) != b"\x20\x02\x00\x00":
        raise SystemExit("bench: publisher: the broker refused the connection")
    ready.set()
    go.wait()
    t0 = time.time()
    sent = acked = 0
    pending = b""
    while acked < n:
        more = sent < n and sent - acked < WINDOW
        if more:
            upto = min(n, acked + WINDOW, sent + 50)
            if rate and (ahead := t0 + sent / rate - time.time()) > 0:
                time.sleep(ahead)
            sock.sendall(b"".join(frames[sent:upto]))
            sent = upto
        # more to write: only the PUBACKs already here; else wait for them
        sock.setblocking(not more)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            data = b""
        sock.setblocking(True)
        if not more and not data:
            raise SystemExit(f"bench: publisher: the broker closed at {acked} of {n} PUBACKs")
        pending += data
        whole = len(pending) // 4  # PUBACKs, 4 bytes each: all the broker sends us
        acked += whole
        pending = pending[whole * 4 :]
    t1 = time.time()
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    results.put((t0, t1, n))


class Load:
    """``n`` publisher processes sharing the fleet, each with its events ready to go."""

    def __init__(
        self, port: int, gates: list[Gate], first: int, last: int, n: int, rate: float = 0.0
    ):
        """``rate``: events a second in all (0: as fast as the broker takes them)."""
        ctx = mp.get_context("spawn")
        self.go = ctx.Event()
        self.results: Any = ctx.Queue()
        self.total = len(gates) * (last - first + 1)
        readies = [ctx.Event() for _ in range(n)]
        self.procs = [
            ctx.Process(
                target=publisher,
                args=(port, gates[i::n], first, last, readies[i], self.go, self.results, rate / n),
                daemon=True,
            )
            for i in range(n)
        ]
        for p in self.procs:
            p.start()
        for r, p in zip(readies, self.procs, strict=True):
            while not r.wait(0.5):
                if not p.is_alive():
                    raise SystemExit("bench: a publisher died while building its events")

    def start(self) -> Load:
        self.go.set()
        return self

    def finish(self) -> float:
        """Wait for every publisher; events a second the broker acknowledged."""
        got = [self.results.get(timeout=900) for _ in self.procs]
        for p in self.procs:
            p.join(10)
        first = min(t0 for t0, _, _ in got)
        last = max(t1 for _, t1, _ in got)
        return sum(n for _, _, n in got) / (last - first)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU these processes have used so far (``/proc/PID/stat``)."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pids(hubs: list[HubProcess]) -> list[int]:
    out = []
    for h in hubs:
        assert h.daemon is not None
        out.append(h.daemon.proc.pid)
    return out


def peak_rss_mb(hubs: list[HubProcess]) -> list[float]:
    """Each hub process's peak resident memory so far (``VmHWM``), MiB."""
    out = []
    for h in hubs:
        assert h.daemon is not None
        status = Path(f"/proc/{h.daemon.proc.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        out.append(kb / 1024)
    return out


class RowCount:
    """``max(rowid)`` of the hub's ``hub_events`` (rows are only added: their count),
    polled every 5 ms on a thread; the time each new figure was first seen."""

    def __init__(self, db: Path):
        self.db = db
        self.seen: list[tuple[float, int]] = []
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        conn = None
        last = -1
        while not self._stop.wait(0.005):
            try:
                if conn is None:
                    if not self.db.exists():
                        continue
                    conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
                (n,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM hub_events").fetchone()
            except sqlite3.Error:
                continue
            now = time.time()
            if n != last:
                with self.cond:
                    self.seen.append((now, int(n)))
                    self.cond.notify_all()
                last = n
        if conn is not None:
            conn.close()

    def now(self) -> int:
        with self.cond:
            return self.seen[-1][1] if self.seen else 0

    def wait(self, n: int, timeout: float) -> float:
        """Until ``n`` rows are seen; when they were."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.seen or self.seen[-1][1] < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = self.seen[-1][1] if self.seen else 0
                    raise SystemExit(f"bench: the hub stored {got} of {n} rows in {timeout:g} s")
                self.cond.wait(min(left, 0.5))
            return next(t for t, k in self.seen if k >= n)

    def rate(self, before: int, after: int) -> tuple[float, float]:
        """Rows a second from the first poll that saw more than ``before`` rows to the
        first that saw ``after``; and that span in seconds."""
        with self.cond:
            seen = list(self.seen)
        t0, n0 = next((t, k) for t, k in seen if k > before)
        t1, n1 = next((t, k) for t, k in seen if k >= after)
        span = t1 - t0
        return ((n1 - n0) / span if span > 0 else float("inf")), span

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Lags:
    """The latency gate's events: when each was first seen committed in the gate's ledger
    and in the hub's store (both files polled every 2 ms on this one thread)."""

    def __init__(self, gate_db: Path, hub_db: Path):
        self.gate_db, self.hub_db = gate_db, hub_db
        self.at_gate: dict[int, tuple[float, str, str]] = {}  # seq -> (seen, kind, ts)
        self.at_hub: dict[int, tuple[float, float]] = {}  # seq -> (seen, received_at)
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        gate = sqlite3.connect(f"file:{self.gate_db}?mode=ro", uri=True, timeout=1)
        hub = sqlite3.connect(f"file:{self.hub_db}?mode=ro", uri=True, timeout=1)
        top_gate = top_hub = 0
        while not self._stop.wait(0.002):
            try:
                new_gate = gate.execute(
                    "SELECT seq, kind, ts FROM events WHERE seq > ? ORDER BY seq", (top_gate,)
                ).fetchall()
                t_gate = time.time()
                new_hub = hub.execute(
                    "SELECT seq, received_at FROM hub_events WHERE site = ? AND gate = ?"
                    " AND seq > ?",
                    (LAT_SITE, LAT_GATE, top_hub),
                ).fetchall()
                t_hub = time.time()
            except sqlite3.Error:
                continue
            with self.cond:
                for seq, kind, ts in new_gate:
                    self.at_gate[seq] = (t_gate, kind, ts)
                    top_gate = max(top_gate, seq)
                for seq, received in new_hub:
                    self.at_hub.setdefault(seq, (t_hub, received))
                # the hub may store out of order after a replay: only a full run moves on
                while top_hub + 1 in self.at_hub:
                    top_hub += 1
                self.cond.notify_all()
        gate.close()
        hub.close()

    def wait(self, what: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (found := what()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit("bench: timed out waiting for the latency gate's events")
                self.cond.wait(min(left, 0.5))
            return found

    def decisions(self) -> list[int]:
        with self.cond:
            return sorted(s for s, (_, kind, _) in self.at_gate.items() if kind == "decision")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def present(
    gate: GateProcess, lags: Lags, cards: list[str], gap: float, stop: threading.Event
) -> list[int]:
    """Each card at ``gate`` once the hub holds the previous decision, until ``stop`` is
    set; the seqs of the decisions."""
    out: list[int] = []
    for card in cards:
        if stop.is_set():
            break
        before = set(lags.decisions())
        gate.present([{"card": card}])

        def decided(before: set[int] = before) -> int:
            return next((s for s in lags.decisions() if s not in before), 0)

        seq: int = lags.wait(decided)

        def stored(seq: int = seq) -> bool:
            return seq in lags.at_hub

        lags.wait(stored)
        out.append(seq)
        time.sleep(gap)
    return out


def describe(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:44} n/a"
    return (
        f"{name:44} {pct(values, 50):7.1f} / {pct(values, 99):7.1f} ms  (max {max(values):.1f},"
        f" n={len(values)})"
    )


def verify(hub: HubProcess, gates: list[Gate], last: int) -> str:
    """Every event of every gate stored once: the row count, ``through``/``highest``."""
    want = len(gates) * last
    (rows,) = hub.query("SELECT count(*) FROM hub_events WHERE site != ?", LAT_SITE)[0]
    bad = hub.query(
        "SELECT count(*) FROM hub_gates WHERE site != ? AND (through != ? OR highest != ?)",
        LAT_SITE,
        last,
        last,
    )[0][0]
    (n_gates, received, duplicates) = hub.query(
        "SELECT count(*), sum(received), sum(duplicates) FROM hub_gates WHERE site != ?", LAT_SITE
    )[0]
    if rows != want or bad or n_gates != len(gates) or received != want:
        raise SystemExit(
            f"bench: stored {rows} rows of {want}; {bad} gates not through {last};"
            f" {n_gates} gates of {len(gates)}; received {received}"
        )
    return (
        f"{rows} rows = {len(gates)} gates x {last}, each gate through = highest = {last},"
        f" missing 0; {duplicates} duplicates received (not stored)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--events", type=int, default=50, help="events per gate and phase")
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--presentations", type=int, default=100)
    parser.add_argument(
        "--gap", type=float, default=0.05, help="seconds between the hub's row and the next card"
    )
    parser.add_argument(
        "--broker-inflight",
        type=int,
        default=0,
        help="mosquitto's max_inflight_messages (0: no limit; mosquitto's default is 20)",
    )
    parser.add_argument(
        "--paced",
        type=float,
        default=2000.0,
        help="events a second of the second loaded latency phase (all publishers)",
    )
    parser.add_argument(
        "--hubs", type=int, default=1, help="hub instances sharing the subscription and database"
    )
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    gates = fleet(args.gates, args.sites)
    e = args.events
    per_phase = len(gates) * e
    tmp = tempfile.TemporaryDirectory(prefix="gated-bench-hub-")
    work = Path(tmp.name)
    extra = f"max_inflight_messages {args.broker_inflight}" if args.broker_inflight else ""
    broker = Mosquitto(work, extra=extra).start()
    first = HubProcess(work / "h1", broker.port)
    # More instances: the same database, the same shared subscription (contracts §9).
    hubs = [first] + [
        HubProcess(
            work / f"h{i}", broker.port, hub_id=f"h{i}", hub={"database": f"sqlite:///{first.db}"}
        )
        for i in range(2, args.hubs + 1)
    ]
    gate: GateProcess | None = None
    rows = lags = None
    print(f"load average                    {os.getloadavg()[0]:.2f} (2 cores shared)")
    try:
        for h in hubs:
            h.start()
        rows = RowCount(first.db)

        # 1. live
        load = Load(broker.port, gates, 1, e, args.publishers)
        assert broker.proc is not None
        mosq = [broker.proc.pid]
        cpu0, bcpu0 = cpu_seconds(pids(hubs)), cpu_seconds(mosq)
        startup = cpu0  # what a start costs before the first message (imports, connect)
        published_live = load.start().finish()
        rows.wait(per_phase, timeout=600)
        live, live_span = rows.rate(0, per_phase)
        live_cpu = (cpu_seconds(pids(hubs)) - cpu0) / per_phase
        live_bcpu = (cpu_seconds(mosq) - bcpu0) / per_phase

        # 2. backlog: published while the hub is stopped, drained at its start
        for h in hubs:
            h.stop()
        load = Load(broker.port, gates, e + 1, 2 * e, args.publishers).start()
        published_backlog = load.finish()
        before, bcpu0 = rows.now(), cpu_seconds(mosq)
        for h in hubs:
            h.start()
        rows.wait(before + per_phase, timeout=600)
        drained, drain_span = rows.rate(before, before + per_phase)
        # The new processes from their start: the queue is handed over before the SUBACK.
        drain_cpu = (cpu_seconds(pids(hubs)) - startup) / per_phase
        drain_bcpu = (cpu_seconds(mosq) - bcpu0) / per_phase
        drain_rss = peak_rss_mb(hubs)
        stored_once = verify(first, gates, 2 * e)

        print(
            f"fleet                           {len(gates)} gates over {args.sites} sites,"
            f" {e} events each per phase ({per_phase} events), {args.publishers} publishers"
        )
        print(
            f"hub                             {args.hubs} instance(s) of gated hub run,"
            f" SQLite synchronous=FULL"
        )
        inflight = args.broker_inflight or "0 (no limit)"
        print(f"broker max_inflight_messages    {inflight}")
        print(f"published live (broker PUBACKs) {published_live:9.0f} events/s")
        print(
            f"stored live                     {live:9.0f} events/s over {live_span:.1f} s"
            f"   ratio to {GOAL}/s: {live / GOAL:.2f}"
        )
        print(f"published, hub stopped          {published_backlog:9.0f} events/s")
        print(
            f"stored draining the backlog     {drained:9.0f} events/s over {drain_span:.1f} s"
            f"   ratio to {GOAL}/s: {drained / GOAL:.2f}"
        )
        for name, cpu in (("live", live_cpu), ("backlog", drain_cpu)):
            print(
                f"hub CPU per event, {name:12} {cpu * 1e6:9.0f} us"
                f"   ({1 / cpu:.0f} events per CPU second; its threads overlap in C)"
            )
        for name, cpu in (("live", live_bcpu), ("backlog", drain_bcpu)):
            print(f"mosquitto CPU per event, {name:7}{cpu * 1e6:8.0f} us")
        rss = ", ".join(f"{mb:.0f}" for mb in drain_rss)
        print(f"hub peak memory after the drain {rss} MiB (VmHWM)")
        print(f"stored exactly once             {stored_once}")
        if args.skip_latency:
            return 0 if min(live, drained) >= GOAL else 1

        # 3. latency: a real gate
        cards = people("A", 6 * args.presentations + 2)
        (work / "gate").mkdir()
        gate = GateProcess(
            work / "gate",
            people=cards,
            site=LAT_SITE,
            gate=LAT_GATE,
            mqtt_url=broker.url,
            feed=True,
            policy={"require_temperature": False},
        ).start()
        lags = Lags(gate.db, first.db)
        uids = [row.rsplit(",", 1)[1] for row in cards]
        present(gate, lags, uids[:1], args.gap, threading.Event())  # warm up
        idle = present(gate, lags, uids[1 : args.presentations + 1], args.gap, threading.Event())
        used = args.presentations + 1
        loaded = []
        top = 2 * e
        for name, rate in (("saturated", 0.0), (f"{args.paced:g}/s", args.paced)):
            load = Load(broker.port, gates, top + 1, top + e, args.publishers, rate)
            top += e
            before = rows.now()
            load.start()
            done = threading.Event()
            end = {"at": float("inf")}

            def drained_load(
                before: int = before, end: dict[str, float] = end, done: threading.Event = done
            ) -> None:
                end["at"] = rows.wait(before + per_phase, timeout=900)
                done.set()

            threading.Thread(target=drained_load, daemon=True).start()
            seqs = present(gate, lags, uids[used:], args.gap, done)
            used += len(seqs)
            published = load.finish()
            done.wait(900)
            seqs = [s for s in seqs if lags.at_gate[s][0] < end["at"]]
            stored, _ = rows.rate(before, before + per_phase)
            loaded.append((name, seqs, published, stored))
    finally:
        for closing in (lags, rows):
            if closing is not None:
                closing.close()
        if gate is not None:
            gate.close()
        for h in hubs:
            h.close()
        broker.kill()
        tmp.cleanup()

    def figures(seqs: list[int]) -> tuple[list[float], list[float], list[float]]:
        polled, from_ts, received = [], [], []
        for s in seqs:
            seen_gate, _, ts = lags.at_gate[s]
            seen_hub, received_at = lags.at_hub[s]
            polled.append((seen_hub - seen_gate) * 1000)
            from_ts.append((seen_hub - ts_seconds(ts)) * 1000)
            received.append((received_at - ts_seconds(ts)) * 1000)
        return polled, from_ts, received

    print(describe("gate commit -> hub row (polled), idle", figures(idle)[0]))
    print(describe("event ts -> hub row (polled), idle", figures(idle)[1]))
    print(describe("event ts -> hub received_at, idle", figures(idle)[2]))
    for name, seqs, published, stored in loaded:
        print(f"load {name:26} published {published:.0f} events/s, stored {stored:.0f} events/s")
        polled, from_ts, received = figures(seqs)
        print(describe(f"gate commit -> hub row (polled), {name}", polled))
        print(describe(f"event ts -> hub row (polled), {name}", from_ts))
        print(describe(f"event ts -> hub received_at, {name}", received))
    return 0 if min(live, drained) >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
