"""The fleet page on a real hub store: a district of gates whose events are built with the
gate's own types (:mod:`gated.events`), stored with :meth:`HubStore.add_events` and
:meth:`HubStore.status` as the ingest does, and :class:`HubWeb` serving it on a free port."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

from gated.clock import iso_utc
from gated.events import Event, Person
from gated.hub.config import HubConfig, load_hub_config
from gated.hub.stats import HubStats
from gated.hub.store import EventRow, HubStore
from gated.hub.web import HubWeb
from gated.status.auth import hash_pin
from tests.support.events import event
from tests.support.mosquitto import free_port

PIN = "7391"
OPERATOR = "duty"
HASH = hash_pin(PIN)
ZHANG = Person(
    id="P001",
    name="Zhang Wei",
    unit="3-402",
    household="H3402",
    category="resident",
    id_number="320623199001011234",
)


def lan_address() -> str | None:
    """An address of this machine's that is not loopback (None: it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def hub_config(tmp_path: Path, listen: str, operators: bool = True, extra: str = "") -> HubConfig:
    """A HUB.toml in ``tmp_path`` (database hub.db beside it), loaded as ``gated hub`` does."""
    ops = f'operators = {{ {OPERATOR} = "{HASH}" }}\n' if operators else ""
    path = tmp_path / "HUB.toml"
    path.write_text(
        '[hub]\nid = "district-1"\ndatabase = "sqlite:///hub.db"\noffline_after_s = 90\n'
        f'[web]\nlisten = "{listen}"\nlanguage = "zh-CN"\n{ops}'
        '[report]\ntimezone = "Asia/Shanghai"\n' + extra
    )
    return load_hub_config(path)


class District:
    """The hub's store, filled the way the ingest fills it."""

    def __init__(self, path: Path):
        self.store = HubStore(path)
        self.seqs: dict[tuple[str, str], int] = {}

    def add(
        self,
        site: str,
        gate: str,
        ev: Event,
        *,
        seq: int | None = None,
        at: float | None = None,
        synced: bool = True,
    ) -> dict[str, Any]:
        """Store one event of a gate (the next seq unless given); its body."""
        at = time.time() if at is None else at
        n = seq if seq is not None else self.seqs.get((site, gate), 0) + 1
        self.seqs[(site, gate)] = max(n, self.seqs.get((site, gate), 0))
        stamped = ev.stamped(
            id=f"{site}-{gate}-{n:06d}",
            ts=iso_utc(at),
            site=site,
            gate=gate,
            seq=n,
            boot=1,
            clock_synced=synced,
        )
        body = stamped.body()
        ts, text = body["ts"], json.dumps(body)
        row = EventRow(site, gate, n, str(body["id"]), stamped.kind, ts, 1, synced, at, text)
        self.store.begin()
        self.store.add_events([row])
        self.store.commit()
        return body

    def conflict(self, site: str, gate: str, seq: int) -> None:
        """Event ``seq`` of a gate sent again under another id (its ledger begun again from
        1, or a forgery), as the ingest hands it to the store: counted, not stored."""
        kind, ts, body = self.store.conn.execute(
            "SELECT kind, ts, body FROM hub_events WHERE site = ? AND gate = ? AND seq = ?",
            (site, gate, seq),
        ).fetchone()
        row = EventRow(site, gate, seq, f"other-{seq}", kind, ts, 2, True, time.time(), body)
        self.store.begin()
        assert len(self.store.add_events([row]).conflicts) == 1
        self.store.commit()

    def busy_day(self, site: str, gate: str, n: int) -> None:
        """``n`` grants and their passages of one gate today, stored in one transaction."""
        at = time.time()
        rows = []
        for i in range(n):
            for ev in (
                event("decision", person=ZHANG.model_dump(), temperature_c=36.5),
                event("passage", ref=f"{site}-{gate}-{2 * i + 1:06d}"),
            ):
                seq = self.seqs.get((site, gate), 0) + 1
                self.seqs[(site, gate)] = seq
                body = ev.stamped(
                    id=f"{site}-{gate}-{seq:06d}",
                    ts=iso_utc(at),
                    site=site,
                    gate=gate,
                    seq=seq,
                    boot=1,
                    clock_synced=True,
                ).body()
                text = json.dumps(body)
                rows.append(
                    EventRow(site, gate, seq, body["id"], ev.kind, body["ts"], 1, True, at, text)
                )
        self.store.begin()
        self.store.add_events(rows)
        self.store.commit()

    def status(self, site: str, gate: str, at: float | None = None, **msg: Any) -> None:
        """A gate's status message as the ingest stores it."""
        body = {
            "state": "online",
            "mode": "normal",
            "devices": {"card": {"ok": True, "detail": ""}},
            "backlog": 0,
            "registry_version": 1,
            "clock_synced": True,
            "last_seq": self.seqs.get((site, gate), 0),
        }
        body.update(msg)
        self.store.begin()
        self.store.status(site, gate, body, time.time() if at is None else at)
        self.store.commit()

    def registry(self, site: str, version: int) -> None:
        """A registry version of ``site`` made and confirmed by the broker."""
        self.store.begin()
        self.store.registry_add(site, version, "{}", 0, 0, "", time.time())
        self.store.registry_sent(site, version, time.time(), None)
        self.store.commit()

    def passages(self, site: str, gate: str, n: int, checked: int, at: float | None = None) -> None:
        """``n`` grants each followed by its passage, ``checked`` of them with a temperature."""
        for i in range(n):
            grant = self.add(
                site,
                gate,
                event(
                    "decision",
                    person=ZHANG.model_dump(),
                    temperature_c=36.5 if i < checked else None,
                    credential={"kind": "card", "ref": "0A1B2C3D4E", "color": None},
                ),
                at=at,
            )
            self.add(site, gate, event("passage", ref=grant["id"]), at=at)

    def alarm(self, site: str, gate: str, alarm: str = "fever", **fields: Any) -> dict[str, Any]:
        return self.add(site, gate, event("alarm", alarm=alarm, detail="", **fields))


class HubPage:
    """:class:`HubWeb` started on ``listen``; plain HTTP requests, from ``via`` if given."""

    def __init__(self, tmp_path: Path, host: str = "127.0.0.1", operators: bool = True):
        port = free_port("0.0.0.0" if host == "0.0.0.0" else host)
        self.config = hub_config(tmp_path, f"{host}:{port}", operators)
        self.district = District(self.config.database_path)
        self.stats = HubStats()
        self.stats.connected = True
        self.web = HubWeb(self.config, self.stats, self.config.database_path)
        self.web.start()
        assert self.web.serving, "the fleet page did not start"
        self.port = self.web.port

    def base(self, via: str = "127.0.0.1") -> str:
        return f"http://{via}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        via: str = "127.0.0.1",
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(via, self.port, timeout=30, source_address=(via, 0))
        h = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        conn.close()
        return out

    def get_json(self, path: str, via: str = "127.0.0.1", cookie: str = "") -> Any:
        status, _, body = self.request("GET", path, headers={"Cookie": cookie}, via=via)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def login(self, via: str = "127.0.0.1", pin: str = PIN) -> tuple[str, str]:
        """(cookie, csrf) of an operator's session."""
        status, headers, body = self.request(
            "POST", "/api/login", {"operator": OPERATOR, "pin": pin}, via=via
        )
        assert status == 200, (status, body)
        return headers["set-cookie"].split(";")[0], json.loads(body)["csrf"]

    def stop(self) -> None:
        self.web.stop()
        self.district.store.close()
