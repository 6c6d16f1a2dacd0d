"""What the status screen lets in: Host names, and the loop's errors logged once a minute
(with a real ``gated run`` that runs out of file descriptors)."""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gated.status.limits import LoopErrors, host_allowed, host_name
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until


def test_host_names_are_read_as_a_browser_sends_them() -> None:
    assert host_name("Gate-North-1.:8080") == "gate-north-1"
    assert host_name("[::1]:8080") == "::1" and host_name("[::1]") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
    for bad in ("", "a:b", "[::1", "[::1]x", "::1"):
        assert host_name(bad) is None, bad
    assert host_allowed("192.0.2.2", "192.0.2.2", set())
    assert host_allowed("127.0.0.1", "::ffff:127.0.0.1", set())
    assert host_allowed("localhost", "127.0.0.1", set())
    assert not host_allowed("localhost", "192.0.2.2", set())
    assert not host_allowed("192.0.2.9", "192.0.2.2", set())
    assert host_allowed("gate", "192.0.2.2", {"gate"})
    assert not host_allowed("evil.example", "127.0.0.1", {"gate"})


def test_a_loop_error_is_logged_once_a_minute_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    handler = LoopErrors(lambda: now[0])
    loop = asyncio.new_event_loop()
    context = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(24, "Too many open files"),
    }
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(5000):
                now[0] += 0.01  # 50 s of errors
                handler(loop, context)
            now[0] += 10.02  # a minute after the first
            handler(loop, context)
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "Too many open files" in lines[0] and "4999 more" in lines[1]


CONFIG = """\
[gate]
id = "g1"
site = "s1"
[storage]
path = "{db}"
[status]
listen = "127.0.0.1:{port}"
max_connections = 200
[turnstile]
driver = "sim"
"""


def few_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (80, 80))


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_out_of_file_descriptors_the_accept_error_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gated.toml"
    config.write_text(CONFIG.format(db=tmp_path / "gated.db", port=port))
    log = tmp_path / "stderr.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gated.cli", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=few_files,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    held: list[socket.socket] = []
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return healthz(port) == 200
            except OSError:
                return False

        wait_until(up, what="the screen")
        assert "LimitNOFILE" in log.read_text()  # warned at start: 80 files for 200 connections
        # More connections than the process has files: accept() fails over and over.
        for _ in range(120):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(
            lambda: "out of system resource" in log.read_text(), what="the accept error", timeout=20
        )
        # For several seconds accept() goes on failing (asyncio retries it every second
        # or sooner): the log keeps the one line.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            text = log.read_text()
            assert text.count("out of system resource") == 1, text[-3000:]
            assert "Traceback" not in text and proc.poll() is None
            time.sleep(0.05)
        for s in held:
            s.close()
        held.clear()
        wait_until(lambda: healthz_or_0(port) == 200, what="the screen again", timeout=20)
    finally:
        for s in held:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def healthz_or_0(port: int) -> int:
    try:
        return healthz(port)
    except OSError:
        return 0
