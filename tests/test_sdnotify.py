"""sd_notify: a real AF_UNIX datagram socket stands in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shortdrama_worker.sdnotify import SystemdNotifier, watchdog_interval_s


def _listener(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def _drain(sock: socket.socket) -> list[str]:
    """Every datagram already queued, without waiting for more."""
    out: list[str] = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


@pytest.fixture
def fs_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = _listener(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"shortdrama-test-{uuid.uuid4().hex}"
    sock = _listener(b"\0" + name.encode())
    yield "@" + name, sock
    sock.close()


def _lifecycle(notifier: SystemdNotifier) -> None:
    assert notifier.ready("consuming gpu,cpu; in flight 0")
    assert notifier.status("in flight 2; gpu queue 5, dlq 0")
    assert notifier.watchdog()
    assert notifier.stopping("draining 2 jobs, grace 30s")
    assert notifier.status("drained")


EXPECTED = [
    "READY=1\nSTATUS=consuming gpu,cpu; in flight 0",
    "STATUS=in flight 2; gpu queue 5, dlq 0",
    "WATCHDOG=1",
    "STOPPING=1\nSTATUS=draining 2 jobs, grace 30s",
    "STATUS=drained",
]


def test_filesystem_socket_receives_the_lifecycle_in_order(
    fs_socket: tuple[str, socket.socket],
) -> None:
    path, sock = fs_socket
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    try:
        _lifecycle(notifier)
    finally:
        notifier.close()
    assert _drain(sock) == EXPECTED


def test_abstract_socket_receives_the_lifecycle_in_order(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    name, sock = abstract_socket
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": name})
    try:
        _lifecycle(notifier)
    finally:
        notifier.close()
    assert _drain(sock) == EXPECTED


def test_status_text_cannot_inject_assignments(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket
    notifier = SystemdNotifier(path)
    try:
        notifier.status("queue error\nREADY=1\nMAINPID=1")
    finally:
        notifier.close()
    assert _drain(sock) == ["STATUS=queue error READY=1 MAINPID=1"]


def test_without_notify_socket_everything_is_a_silent_no_op() -> None:
    notifier = SystemdNotifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert not notifier.watchdog_enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    notifier.close()


async def test_run_watchdog_returns_at_once_without_a_watchdog(
    fs_socket: tuple[str, socket.socket],
) -> None:
    path, sock = fs_socket
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    await asyncio.wait_for(notifier.run_watchdog(), timeout=1)
    notifier.close()
    assert _drain(sock) == []


def test_a_vanished_listener_does_not_raise(tmp_path: Path) -> None:
    path = str(tmp_path / "gone.sock")
    sock = _listener(path)
    sock.close()
    os.unlink(path)
    notifier = SystemdNotifier(path)
    assert notifier.ready() is False
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval_s(env, pid=4242) == expected


def test_from_env_uses_this_process_for_watchdog_pid(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    ours = SystemdNotifier.from_env(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    )
    parents = SystemdNotifier.from_env(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getppid())}
    )
    assert ours.watchdog_interval_s == 1.0
    assert parents.watchdog_interval_s is None


async def test_watchdog_pings_only_while_healthy(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket
    # WatchdogSec=0.1 s: pings every 0.05 s.
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    healthy = True
    task = asyncio.create_task(notifier.run_watchdog(lambda: healthy))
    try:
        await asyncio.sleep(0.6)
        pings_healthy = _drain(sock)
        healthy = False
        await asyncio.sleep(0.06)  # let a ping already decided on arrive
        _drain(sock)
        await asyncio.sleep(0.6)
        pings_unhealthy = _drain(sock)
        healthy = True
        await asyncio.sleep(0.6)
        pings_recovered = _drain(sock)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    assert len(pings_healthy) >= 3
    assert set(pings_healthy) == {"WATCHDOG=1"}
    assert pings_unhealthy == []
    assert len(pings_recovered) >= 3


async def test_a_failing_health_check_withholds_the_ping_without_killing_the_task(
    fs_socket: tuple[str, socket.socket],
) -> None:
    path, sock = fs_socket
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("consumer state unreadable")
        return True

    task = asyncio.create_task(notifier.run_watchdog(check))
    try:
        await asyncio.sleep(0.12)
        assert _drain(sock) == []
        assert not task.done()
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    assert "WATCHDOG=1" in _drain(sock)


async def test_a_blocked_event_loop_stops_the_pings(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    arrivals: list[float] = []
    stop = threading.Event()

    def receive() -> None:
        # A thread timestamps each datagram as it arrives, independently of
        # the event loop under test.
        sock.settimeout(0.02)
        while not stop.is_set():
            try:
                sock.recv(4096)
            except TimeoutError:
                continue
            arrivals.append(time.monotonic())

    receiver = threading.Thread(target=receive)
    receiver.start()
    task = asyncio.create_task(notifier.run_watchdog())
    try:
        await asyncio.sleep(0.5)
        blocked_from = time.monotonic()
        # The point of the test: a synchronous call hogging the loop.
        time.sleep(0.5)  # noqa: ASYNC251
        blocked_until = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
        stop.set()
        receiver.join()
    before = [t for t in arrivals if t < blocked_from]
    during = [t for t in arrivals if blocked_from < t < blocked_until]
    after = [t for t in arrivals if t > blocked_until]
    assert len(before) >= 2
    # A ping sent just before the block may be read by a busy thread during
    # it; a sender off the loop would have sent about ten.
    assert len(during) <= 1
    assert len(after) >= 2


async def test_run_status_sends_only_changes(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket
    notifier = SystemdNotifier(path)
    texts = iter(["in flight 0", "in flight 0", "in flight 1", "in flight 1", "in flight 0"])
    last = "in flight 0"

    def render() -> str:
        nonlocal last
        last = next(texts, last)
        return last

    task = asyncio.create_task(notifier.run_status(render, interval_s=0.01))
    try:
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    assert _drain(sock) == ["STATUS=in flight 0", "STATUS=in flight 1", "STATUS=in flight 0"]


async def test_run_status_does_not_repeat_the_status_sent_with_ready(
    fs_socket: tuple[str, socket.socket],
) -> None:
    path, sock = fs_socket
    notifier = SystemdNotifier(path)
    notifier.ready("in flight 0")
    task = asyncio.create_task(notifier.run_status(lambda: "in flight 0", interval_s=0.01))
    try:
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    assert _drain(sock) == ["READY=1\nSTATUS=in flight 0"]
