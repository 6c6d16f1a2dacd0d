"""sd_notify on a fake notify socket: READY after start-up, watchdog pings that stop
when the controller loop stalls, STOPPING on the way out."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gated.app import App
from gated.clock import FakeClock
from gated.notify import Notifier
from tests.support.daemon import Daemon
from tests.support.notify import NotifySocket
from tests.support.rig import make_config


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_without_a_service_manager_everything_is_a_no_op() -> None:
    n = Notifier(env={})
    assert not n.enabled and not n.watchdog_enabled
    assert n.ready("x") is False and n.status("x") is False and n.stopping() is False
    n.watchdog()
    assert n.pings == 0


def test_messages_and_the_watchdog_rate(manager: NotifySocket) -> None:
    now = [100.0]
    n = Notifier(
        env={"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "10000000"},
        monotonic=lambda: now[0],
    )
    assert n.watchdog_interval_s == 10.0
    assert n.ready("running,\nmode normal")
    assert manager.receive(5) == "READY=1\nSTATUS=running, mode normal"
    assert n.status("backlog 3")
    assert manager.receive(5) == "STATUS=backlog 3"
    sent = []
    for _ in range(40):  # every 0.25 s for 10 s: one ping per 5 s (half the interval)
        n.watchdog()
        sent.append(n.pings)
        now[0] += 0.25
    assert n.pings == 2 and sent[0] == 1 and sent.index(2) == 20
    assert manager.drain() == ["WATCHDOG=1", "WATCHDOG=1"]
    assert n.stopping("bye")
    assert manager.receive(5) == "STOPPING=1\nSTATUS=bye"
    n.close()
    assert n.ready() is False


def test_abstract_socket_and_the_watchdog_of_another_process() -> None:
    name = f"gated-test-{os.getpid()}-{time.monotonic_ns()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    try:
        n = Notifier(env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        assert n.ready()
        server.settimeout(5)
        assert server.recv(100) == b"READY=1"
        other = Notifier(
            env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
        )
        assert other.enabled and not other.watchdog_enabled
        assert not Notifier(env={"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "soon"}).watchdog_enabled
        assert not Notifier(env={"NOTIFY_SOCKET": "vsock:2:9"}).enabled
        n.close()
        other.close()
    finally:
        server.close()


def test_a_vanished_manager_is_counted_not_fatal(tmp_path: Path) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False and n.status("x") is False
    assert n.failures == 2
    n.close()


def test_daemon_ready_watchdog_stall_and_stopping(
    tmp_path: Path, manager: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(manager.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a ping every 0.1 s at most
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = make_config(tmp_path, status={"listen": ""}, card={"driver": "sim"})
    app = App(config, clock=FakeClock())
    order: list[str] = []

    def recording(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        # A start is recorded once it has returned, READY before it goes out.
        def wrapper(*args: object) -> object:
            if name == "READY":
                order.append(name)
            result = fn(*args)
            if name != "READY":
                order.append(name)
            return result

        return wrapper

    for name, device in app.devices.items():
        device.start = recording(name, device.start)  # type: ignore[method-assign]
    for service in app.services:
        service.start = recording(type(service).__name__, service.start)  # type: ignore[method-assign]
    app.notifier.ready = recording("READY", app.notifier.ready)  # type: ignore[method-assign]
    entered, release = threading.Event(), threading.Event()
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        assert manager.wait_for(lambda m: m.startswith("READY=1")).startswith("READY=1\nSTATUS=")
        # READY only once the database is open and every device and service is up.
        assert order[-1] == "READY"
        services = {type(service).__name__ for service in app.services}
        assert "RetentionService" in services
        assert set(order[:-1]) == {*app.devices, *services}
        assert app.ledger.boot == 1
        for _ in range(3):
            manager.wait_for(lambda m: m == "WATCHDOG=1")

        # Stall the controller loop: pings stop while it is stuck, and come back after.
        def stuck() -> None:
            entered.set()
            release.wait(60)

        app.controller.submit(stuck)
        assert entered.wait(30)
        manager.drain()  # pings sent before the stall began
        pings_before = app.notifier.pings
        assert manager.receive(1.0) is None  # five watchdog intervals of silence
        assert app.notifier.pings == pings_before
        release.set()
        manager.wait_for(lambda m: m == "WATCHDOG=1")
    finally:
        release.set()
        app.stop_event.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert any(m.startswith("STOPPING=1") for m in manager.drain())


def test_gated_run_notifies_and_stops_on_sigterm(
    tmp_path: Path, manager: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gated.toml"
    config.write_text(
        f'[gate]\nid = "g1"\nsite = "s1"\n[storage]\npath = "{tmp_path / "gated.db"}"\n'
        '[status]\nlisten = ""\n[turnstile]\ndriver = "sim"\n[card]\ndriver = "sim"\n'
    )
    monkeypatch.setenv("NOTIFY_SOCKET", str(manager.path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon("run", "-c", str(config))
    try:
        manager.wait_for(lambda m: m.startswith("READY=1"))
        manager.wait_for(lambda m: m == "WATCHDOG=1")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish(timeout=30) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert any(m.startswith("STOPPING=1") for m in manager.drain())
