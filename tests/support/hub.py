"""A real ``gated hub run`` process on a real broker, and reads of its SQLite store.

hub = HubProcess(tmp_path / "hub", broker.port).start()   # until it has subscribed
hub.wait_events("s1", "g1", through=12)                     # its store holds 1..12
hub.rows("s1", "g1")                                        # (seq, id) stored, in order
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from gated.hub.store import HubStore
from tests.support.daemon import Daemon
from tests.support.gate_config import deep_merge
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + "}"
    return repr(value)


def write_hub_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A HUB.toml of these sections (one level of tables, values inline)."""
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class HubProcess:
    """One hub instance's config and database in ``tmp_path``; started and stopped at will."""

    def __init__(
        self, tmp_path: Path, broker_port: int, hub_id: str = "h1", **sections: Any
    ) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.web_port = free_port()
        base: dict[str, dict[str, Any]] = {
            "hub": {"id": hub_id, "database": "sqlite:///hub.db"},
            "mqtt": {"urls": [f"mqtt://127.0.0.1:{broker_port}"]},
            "web": {"listen": f"127.0.0.1:{self.web_port}"},
            "report": {"timezone": "Asia/Shanghai"},
        }
        merged = deep_merge(base, sections)
        self.db = tmp_path / merged["hub"]["database"].removeprefix("sqlite:///")
        self.config = write_hub_config(tmp_path / "hub.toml", merged)
        self.daemon: Daemon | None = None

    def start(self) -> HubProcess:
        """``gated hub run`` until it has subscribed at the broker."""
        assert self.daemon is None or self.daemon.proc.poll() is not None
        daemon = self.daemon = Daemon("hub", "run", "-c", str(self.config))
        daemon.wait_for(lambda lines: any("subscribed" in x for x in lines[-50:]), timeout=30)
        return self

    def stop(self) -> None:
        """SIGTERM; it must exit 0."""
        if self.daemon is not None and self.daemon.proc.poll() is None:
            code = self.daemon.stop()
            assert code == 0, self.daemon.output()

    def kill(self) -> None:
        """SIGKILL (``kill -9``)."""
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.proc.kill()
            self.daemon.finish(timeout=10)

    def close(self) -> None:
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.stop()

    def output(self) -> str:
        return self.daemon.output() if self.daemon is not None else ""

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of the hub's database, read-only (empty before it exists)."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def rows(self, site: str, gate: str) -> list[tuple[int, str]]:
        """The (seq, id) stored of a gate, in seq order."""
        got = self.query(
            "SELECT seq, id FROM hub_events WHERE site = ? AND gate = ? ORDER BY seq", site, gate
        )
        return [(int(s), str(i)) for s, i in got]

    def gate(self, site: str, gate: str) -> dict[str, Any] | None:
        """The gate's row as ``gated hub gates`` shows it (``missing`` computed)."""
        if not self.db.exists():
            return None
        store = HubStore(self.db)
        try:
            for row in store.gate_rows():
                if (row["site"], row["gate"]) == (site, gate):
                    return row
        finally:
            store.close()
        return None

    def wait_through(self, site: str, gate: str, seq: int, timeout: float = 30.0) -> dict[str, Any]:
        """Until the hub holds every event of the gate up to ``seq``; the gate's row."""
        row: dict[str, Any] = wait_until(
            lambda: (r := self.gate(site, gate)) is not None and r["through"] >= seq and r,
            f"the hub holding {site}/{gate} through seq {seq}",
            timeout=timeout,
        )
        return row
