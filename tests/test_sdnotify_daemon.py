"""The daemon under a fake systemd: READY, STATUS, WATCHDOG and STOPPING, in order."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_daemon_speaks_sd_notify_through_its_lifecycle(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(
        '[api]\nhost = "127.0.0.1"\nport = 0\n'
        "[local]\nembedded_aws = true\n"
        "[queues]\nwait_time_s = 1\nvisibility_timeout_s = 30\n"
        '[consumer]\nshutdown_grace_s = 2.0\nconsume = ["cpu"]\n'
        # Only a handler with no remote dependency, so /ready depends on the
        # daemon alone.
        '[handlers]\nallow = ["face_mask"]\n'
        '[log]\nformat = "json"\n'
        # As the embedded default: a development certificate made on first run.
        f'[provenance]\ndev_certificate = true\ndev_certificate_dir = "{tmp_path / "c2pa"}"\n'
    )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(0.2)
    received: list[tuple[float, str]] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                received.append((time.monotonic(), listener.recv(4096).decode()))
            except TimeoutError:
                continue

    thread = threading.Thread(target=receive)
    thread.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHORTDRAMA_", "WATCHDOG_"))}
    env |= {
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "400000",  # WatchdogSec=0.4 s: a ping every 0.2 s
        "PYTHONPATH": str(ROOT),
    }
    daemon = subprocess.Popen(
        [sys.executable, "-c", "from shortdrama_worker.cli import main; main()",
         "--config", str(config), "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(m.startswith("READY=1") for _, m in received):
            assert daemon.poll() is None, daemon.communicate()[0]
            assert time.monotonic() < deadline, "no READY=1 within 60 s"
            time.sleep(0.05)
        # READY means taking work: the API listens and /ready says so.
        assert daemon.stdout is not None
        url = next(
            line.split("serving on ")[1].strip()
            for line in iter(daemon.stdout.readline, "")
            if "serving on " in line
        )
        with urllib.request.urlopen(f"{url}/ready", timeout=5) as resp:
            assert resp.status == 200
        # Pings, and a STATUS once the queue depths are polled: waited for by
        # the clock, as a slow machine may take more than one status tick.
        deadline = time.monotonic() + 30
        while not (
            sum(m.startswith("WATCHDOG=") for _, m in received) >= 5
            and any("cpu_tasks_queue 0" in m for _, m in received if m.startswith("STATUS="))
        ):
            assert daemon.poll() is None, daemon.communicate()[0]
            assert time.monotonic() < deadline, f"no pings or queue STATUS in 30 s: {received}"
            time.sleep(0.05)
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
        done.set()
        thread.join()
        listener.close()
    assert daemon.returncode == 0, output
    messages = [m for _, m in received]
    kinds = [m.split("=")[0] for m in messages]
    assert kinds[0] == "READY"
    assert messages[0].startswith("READY=1\nSTATUS=in flight 0, prefetched 0; ")
    stopping = kinds.index("STOPPING")
    assert messages[stopping] == "STOPPING=1\nSTATUS=draining 0 job(s), grace 2s"
    # Between READY and STOPPING: watchdog pings and STATUS updates only.
    assert set(kinds[1:stopping]) == {"WATCHDOG", "STATUS"}
    assert kinds.count("WATCHDOG") >= 5
    assert any("cpu_tasks_queue 0" in m for m in messages[1:stopping] if m.startswith("STATUS="))
    # After STOPPING: nothing but pings (the drain keeps the watchdog fed).
    assert set(kinds[stopping + 1 :]) <= {"WATCHDOG"}
    # At most one READY and one STOPPING.
    assert kinds.count("READY") == 1 and kinds.count("STOPPING") == 1
    print("\n".join(repr(m) for m in messages))
