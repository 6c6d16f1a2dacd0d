"""Prometheus metrics of one gate, fed from its events (server loop only).

Counters count since the daemon started, as Prometheus expects; gauges read the
latest controller snapshot and, at scrape time, the outbox backlog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

TEMP_BUCKETS = (34.0, 35.0, 35.5, 36.0, 36.5, 37.0, 37.3, 37.5, 38.0, 38.5, 39.0, 40.0, 42.5)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class _MqttRefusals:
    """``gated_mqtt_refused_total{code}``: messages from the broker refused by the input
    guard or the command rules, read at scrape time from the publisher's counts (they are
    counted on its thread, so they are not a Counter of this registry)."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]):
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gated_mqtt_refused",
            "MQTT messages refused (commands and registry messages), by the rule they broke.",
            labels=["code"],
        )
        for code, n in sorted(dict(self.counts()).items()):
            family.add_metric([code], n)
        yield family


class GateMetrics:
    """The metrics ``GET /metrics`` serves, in a registry of their own."""

    def __init__(
        self,
        backlog: Callable[[], float],
        broker: Callable[[], bool | None],
        mqtt_refusals: Callable[[], Mapping[str, int]] = dict,
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_MqttRefusals(mqtt_refusals))
        self.sessions = Counter(
            "gated_sessions", "Sessions ended in a verdict, by decision.", ["decision"], registry=r
        )
        self.reasons = Counter(
            "gated_session_reasons",
            "Reasons named by verdicts, by decision and reason (a verdict may name several).",
            ["decision", "reason"],
            registry=r,
        )
        self.decide_latency = Histogram(
            "gated_decide_latency_seconds",
            "Time from a session's last input to its verdict.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.temperature = Histogram(
            "gated_temperature_celsius",
            "Session temperatures (the last valid reading), in degrees Celsius.",
            buckets=TEMP_BUCKETS,
            registry=r,
        )
        self.events = Counter("gated_events", "Ledger events, by kind.", ["kind"], registry=r)
        self.alarms = Counter("gated_alarms", "Alarms raised, by alarm.", ["alarm"], registry=r)
        self.device_up = Gauge(
            "gated_device_up", "1 while a device works, 0 when it fails.", ["device"], registry=r
        )
        self.guards = Gauge("gated_guards_on_duty", "Guards on duty at this gate.", registry=r)
        self.mode = Gauge("gated_mode", "1 for the gate's current mode.", ["mode"], registry=r)
        self.backlog = Gauge(
            "gated_outbox_backlog", "Events waiting in the outbox for the broker.", registry=r
        )
        self.backlog.set_function(backlog)
        self._broker = broker
        self.broker = Gauge(
            "gated_broker_connected",
            "1 while the MQTT broker is connected, 0 when not, NaN when unknown.",
            registry=r,
        )
        self.peer_missing = Gauge(
            "gated_peer_missing",
            "Seq numbers of a peer gate of the site not heard yet (SPEC §4b).",
            ["peer"],
            registry=r,
        )
        self.peer_through = Gauge(
            "gated_peer_through",
            "The seq up to which every event of a peer gate is known.",
            ["peer"],
            registry=r,
        )
        self.peer_online = Gauge(
            "gated_peer_online", "1 while a peer gate is online, 0 when not.", ["peer"], registry=r
        )
        self.sse_clients = Gauge(
            "gated_status_clients", "Screens connected to the live stream.", registry=r
        )
        self.refused = Counter(
            "gated_status_refused",
            "Connections and live screens refused with 503, by what was full.",
            ["reason"],
            registry=r,
        )
        self.logins = Counter(
            "gated_status_logins",
            "Guard PIN tries: checked (ok, wrong), or refused unchecked (locked).",
            ["result"],
            registry=r,
        )

    def event(self, event: dict[str, Any]) -> None:
        """Count one ledger event."""
        kind = str(event.get("kind"))
        self.events.labels(kind).inc()
        if kind == "alarm":
            self.alarms.labels(str(event.get("alarm"))).inc()
        if kind != "decision":
            return
        decision = str(event.get("decision"))
        self.sessions.labels(decision).inc()
        for reason in event.get("reasons") or []:
            self.reasons.labels(decision, str(reason)).inc()
        latency = (event.get("latency_ms") or {}).get("decide")
        if isinstance(latency, (int, float)):
            self.decide_latency.observe(latency / 1000)
        temp = event.get("temperature_c")
        if event.get("ref") is None and isinstance(temp, (int, float)):
            self.temperature.observe(temp)

    def snapshot(self, snap: dict[str, Any], devices: dict[str, dict[str, Any]]) -> None:
        """Update the gauges from a controller snapshot."""
        for name, health in devices.items():
            self.device_up.labels(name).set(1 if health.get("ok") else 0)
        self.guards.set(len(snap.get("guards_on_duty") or []))
        for mode in ("normal", "locked", "free", "guard_only"):
            self.mode.labels(mode).set(1 if snap.get("mode") == mode else 0)
        for peer, known in (snap.get("peers") or {}).items():
            self.peer_missing.labels(peer).set(known.get("missing", 0))
            self.peer_through.labels(peer).set(known.get("through", 0))
            self.peer_online.labels(peer).set(1 if known.get("online") else 0)

    def render(self) -> bytes:
        """The text exposition format."""
        connected = self._broker()
        if connected is None:
            self.broker.set(float("nan"))
        else:
            self.broker.set(1 if connected else 0)
        return generate_latest(self.registry)
