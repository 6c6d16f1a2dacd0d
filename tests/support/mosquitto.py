"""A real mosquitto for tests: its own config in ``tmp_path``, a free port, start/stop/kill.

    broker = Mosquitto(tmp_path)           # plain listener on a free port
    broker.start(); ...; broker.kill(); broker.start()   # same port again
    broker.url  ->  "mqtt://127.0.0.1:PORT"

Extra config lines (TLS listener, ACL file, password file) go in ``extra``.
Skips the test when mosquitto is not installed (scripts/setup.sh installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port(address: str = "127.0.0.1") -> int:
    """A port nobody listens on at ``address`` (0.0.0.0: at any address) just now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until either side closes, then shut both (a proxy's half)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


class Mosquitto:
    """One broker process; ``start`` again after ``stop``/``kill`` reuses the port."""

    def __init__(
        self,
        tmp_path: Path,
        extra: str = "",
        name: str = "broker",
        port: int = 0,
        persistent: bool = False,
    ):
        if not Path(MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed (scripts/setup.sh installs it)")
        self.dir = tmp_path / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.extra = extra
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        persistence = (
            ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
            if self.persistent
            else ["persistence false"]
        )
        lines = [
            *persistence,
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "max_queued_messages 0",
            "max_inflight_messages 0",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to "mosquitto" and cannot read tmp_path
        if "listener" not in self.extra:
            lines += [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        self.conf.write_text("\n".join(lines) + "\n" + self.extra + "\n")

    def start(self, timeout: float = 20.0) -> Mosquitto:
        """Start and wait until the port accepts connections."""
        self.write_config()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                if "Address already in use" in err + log:
                    time.sleep(0.2)  # the old process's socket is still going away
                    self.proc = subprocess.Popen(
                        [MOSQUITTO, "-c", str(self.conf)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                    continue
                raise RuntimeError(f"mosquitto exited: {err} {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes mid-conversation."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class Collector:
    """A subscriber that keeps every message it receives (topic, payload, retain)."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        client_id: str = "collector",
        persistent: bool = False,
        **auth: Any,
    ):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.topics = topics
        self.subscribed = threading.Event()
        # persistent: the broker keeps the subscription (and queues for it) across restarts
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
        )
        if auth.get("username"):
            self.client.username_pw_set(auth["username"], auth.get("password"))
        if auth.get("tls"):
            self.client.tls_set(**auth["tls"])
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(20):
            raise AssertionError("collector did not subscribe")

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        for t in self.topics:
            c.subscribe(t, qos=1)

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self.cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> None:
        """Wait until ``predicate(messages)`` holds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; {len(self.messages)} messages so far")
                self.cond.wait(min(left, 0.5))

    def events(self) -> list[dict[str, Any]]:
        """Payloads of ``*/event`` and ``*/alarm`` messages, in arrival order."""
        with self.cond:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(("/event", "/alarm"))]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish(port: int, topic: str, payload: Any, retain: bool = False, **auth: Any) -> None:
    """Publish one message with QoS 1 and wait for its PUBACK."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
    if auth.get("username"):
        c.username_pw_set(auth["username"], auth.get("password"))
    c.connect("127.0.0.1", port)
    c.loop_start()
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    info = c.publish(topic, data, qos=1, retain=retain)
    info.wait_for_publish(timeout=10)
    c.disconnect()  # first: the loop thread then ends at once, not after its 1 s select
    c.loop_stop()


class Door:
    """A TCP forwarder in front of a broker that can be shut: the gate's way in.

    ``shut()`` refuses new connections (and cuts the open ones), ``open()`` lets them
    through again, so a test can bring a broker back and let its own subscriber
    reconnect first, before the gate's first message.
    """

    def __init__(self, target_port: int):
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.is_open = threading.Event()
        self.is_open.set()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            if not self.is_open.is_set():
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            self.conns += [down, up]
            threading.Thread(target=pump, args=(down, up), daemon=True).start()
            threading.Thread(target=pump, args=(up, down), daemon=True).start()

    def shut(self) -> None:
        self.is_open.clear()
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.conns = []

    def open(self) -> None:
        self.is_open.set()

    def close(self) -> None:
        self.shut()
        self.server.close()


def command(
    port: int, root: str, name: str, payload: dict[str, Any], timeout: float = 30.0
) -> dict[str, Any]:
    """Send ``{root}/cmd/{name}`` once the gate takes commands; its ``cmd_result``, waited for.

    A gate publishes its status before it subscribes to its commands, and a command the
    broker got before that is lost: a ``ping`` is sent every half second until one is
    answered, then the command.
    """
    col = Collector(port, [f"{root}/cmd_result"], client_id=f"cmd-{time.monotonic_ns()}")
    try:

        def answer(req: str, within: float) -> dict[str, Any] | None:
            def found(messages: list[Any]) -> bool:
                return any(json.loads(p).get("req") == req for _, p, _ in messages)

            try:
                col.wait_for(found, timeout=within)
            except AssertionError:
                return None
            with col.cond:
                results = [json.loads(p) for _, p, _ in col.messages]
            return next(r for r in results if r.get("req") == req)

        deadline = time.monotonic() + timeout
        while True:
            req = f"ping-{time.monotonic_ns()}"
            publish(port, f"{root}/cmd/ping", {"req": req})
            if answer(req, 0.5) is not None:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{root} took no command within {timeout:g} s")
        req = f"{name}-{time.monotonic_ns()}"
        publish(port, f"{root}/cmd/{name}", {"req": req, **payload})
        result = answer(req, timeout)
        if result is None:
            raise AssertionError(f"{root} did not answer cmd/{name} within {timeout:g} s")
        return result
    finally:
        col.close()
