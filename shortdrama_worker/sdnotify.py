"""The systemd notification protocol (``sd_notify(3)``), spoken directly.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``$NOTIFY_SOCKET``; the service sends newline-separated ``KEY=VALUE`` lines to
it. The protocol is one ``sendto`` per message, so a dependency (or libsystemd)
buys nothing.

Every method is a no-op when ``$NOTIFY_SOCKET`` is unset, so the daemon runs
the same way from a shell, in tests and under systemd.

The watchdog is fed by :meth:`SystemdNotifier.run_watchdog`, a coroutine the
application runs as a task on its own event loop. Because the ping is sent by
that coroutine, an event loop blocked by a runaway synchronous call stops the
pings by construction, and systemd restarts the process once ``WatchdogSec``
passes. A loop that runs but is unhealthy (the consumer died) stops them too,
through the ``healthy`` callable. A merely slow job does neither: it awaits.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["SystemdNotifier", "watchdog_interval_s"]


def _address(notify_socket: str) -> str | bytes:
    """Map ``$NOTIFY_SOCKET`` to a ``sendto`` address.

    A leading ``@`` names a Linux abstract socket, whose real name starts with
    a NUL byte (systemd uses these in containers and for user managers).
    """
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    return notify_socket


def watchdog_interval_s(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between watchdog pings, or ``None`` when no watchdog applies.

    ``sd_watchdog_enabled(3)`` advises pinging at half of ``WATCHDOG_USEC`` so
    one late ping does not trigger a restart. ``WATCHDOG_PID``, when set, names
    the process the watchdog is for; a child that inherited the environment
    must not ping on its parent's behalf.
    """
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2


def _clean(text: str) -> str:
    # A newline would start a new assignment and let free text (an error
    # message, a queue name) inject e.g. READY=1 or MAINPID=.
    return " ".join(text.splitlines()).strip()


class SystemdNotifier:
    """Sends state changes to systemd; silent when not run by systemd.

    Build one per application with :meth:`from_env` and :meth:`close` it on
    shutdown. Sending never raises: systemd being gone (the manager restarting,
    a test without a listener) must not take the daemon down with it; each
    method returns whether the datagram went out.
    """

    def __init__(
        self, notify_socket: str | None, *, watchdog_interval_s: float | None = None
    ) -> None:
        self._address = _address(notify_socket) if notify_socket else None
        self._sock: socket.socket | None = None
        # The STATUS text systemd shows now, so run_status sends only changes.
        self._status: str | None = None
        self.watchdog_interval_s = watchdog_interval_s if self._address is not None else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval_s=watchdog_interval_s(env))

    @property
    def enabled(self) -> bool:
        """True when systemd asked for notifications."""
        return self._address is not None

    @property
    def watchdog_enabled(self) -> bool:
        """True when systemd expects ``WATCHDOG=1`` pings from this process."""
        return self.watchdog_interval_s is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram (one state change)."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop: a full receive queue in the
                # manager drops this message instead of stalling every job.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up finished; ``systemctl start`` returns now."""
        return self._with_status("READY=1", status)

    def status(self, text: str) -> bool:
        """``STATUS=``: the one-line summary shown by ``systemctl status``."""
        return self._with_status(None, text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the process is alive and healthy."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: draining has begun; systemd expects the exit."""
        return self._with_status("STOPPING=1", status)

    def _with_status(self, state: str | None, status: str | None) -> bool:
        assignments = [state] if state else []
        text = None if status is None else _clean(status)
        if text is not None:
            assignments.append(f"STATUS={text}")
        sent = self.notify(*assignments)
        if sent and text is not None:
            self._status = text
        return sent

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for more time to start or stop."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    async def run_watchdog(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping ``WATCHDOG=1`` every interval while ``healthy()`` is true.

        Run it as a task on the application's event loop and cancel it on
        shutdown. Returns at once when systemd set no watchdog. An unhealthy
        check skips the ping rather than ending the loop, so a dependency that
        recovers within ``WatchdogSec`` costs no restart.
        """
        interval = self.watchdog_interval_s
        if interval is None:
            return
        while True:
            try:
                ok = healthy()
            except Exception:
                # A failing check means health is unknown: withhold the ping
                # and keep looping, rather than let the task die unobserved.
                ok = False
            if ok:
                self.watchdog()
            await asyncio.sleep(interval)

    async def run_status(self, render: Callable[[], str], interval_s: float = 5.0) -> None:
        """Keep ``STATUS=`` current: send ``render()`` whenever its text changes.

        Run it as a task beside :meth:`run_watchdog`. Text equal to the last
        STATUS sent (by any method) is not resent, so an idle worker costs
        systemd nothing.
        """
        if not self.enabled:
            return
        while True:
            text = _clean(render())
            if text != self._status:
                self.status(text)
            await asyncio.sleep(interval_s)

    def close(self) -> None:
        """Release the socket; later messages open a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
