"""systemd's notify protocol: ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=``.

A datagram to the unix socket named by ``NOTIFY_SOCKET`` (``@`` = abstract
namespace). No systemd library needed, and tests listen on their own socket.
The watchdog pings are sent from the server's event loop, so they stop when
the loop hangs — which is the point.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SdNotifier:
    """Sends notifications when ``NOTIFY_SOCKET`` is set; a no-op otherwise."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_usec / 1_000_000 if watchdog_usec else None
        self.sent = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SdNotifier:
        usec = environ.get("WATCHDOG_USEC", "")
        return cls(
            environ.get("NOTIFY_SOCKET") or None,
            watchdog_usec=int(usec) if usec.isdigit() and int(usec) > 0 else None,
        )

    @property
    def is_enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), target)
        except OSError as exc:
            log.warning("sd_notify %s to %s failed: %s", message.split("=")[0], self.address, exc)
            return False
        self.sent += 1
        return True

    async def watchdog_loop(self) -> None:
        """Ping at half the watchdog interval, as systemd recommends."""
        if self.watchdog_s is None or self.address is None:
            return
        interval = max(0.05, self.watchdog_s / 2)
        log.info("systemd watchdog: pinging every %.2f s", interval)
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
