"""Refused admin-token attempts: counted, and logged without flooding the log.

Every refusal (no token, or a wrong one, on an endpoint that needs it) adds
1 to ``vigil_auth_failures``. The log gets at most one line per client
address per minute; refusals within that minute are counted and told in the
next line for that address (or by :meth:`AuthAudit.sweep` once the minute
is over). The line names the client address, the method and the path; never
a header, so never the token that was tried.

The memory is bounded: at most ``MAX_ADDRESSES`` addresses are remembered;
past that, further addresses share one more entry (``other addresses``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.counter_buffer import CounterBuffer

log = logging.getLogger(__name__)

WINDOW_S = 60.0
MAX_ADDRESSES = 1024
OVERFLOW = "other addresses"


class AuthAudit:
    """Counts refused admin-token attempts and logs them rate-limited per address."""

    def __init__(
        self, counters: CounterBuffer, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.counters = counters
        self.clock = clock
        # address -> [time of its last line, refusals not logged since]
        self._seen: dict[str, list[float]] = {}

    def refused(self, client: str, why: str, method: str, path: str) -> None:
        """One refused attempt from ``client`` (``why``: "no token" / "wrong token")."""
        self.counters.add("vigil_auth_failures")
        now = self.clock()
        if client not in self._seen and len(self._seen) >= MAX_ADDRESSES:
            self.sweep(now)
            if len(self._seen) >= MAX_ADDRESSES:
                client = OVERFLOW
        entry = self._seen.get(client)
        if entry is not None and now - entry[0] < WINDOW_S:
            entry[1] += 1
            return
        earlier = int(entry[1]) if entry is not None else 0
        self._seen[client] = [now, 0]
        log.warning(
            "admin token refused for %s: %s on %s %s%s",
            client,
            why,
            method,
            _printable(path),
            f" (and {earlier} more refusal(s) not logged before this)" if earlier else "",
        )

    def sweep(self, now: float | None = None) -> int:
        """Tell the refusals a finished minute held back; forget quiet addresses."""
        now = self.clock() if now is None else now
        told = 0
        for client, entry in list(self._seen.items()):
            if now - entry[0] < WINDOW_S:
                continue
            if entry[1]:
                log.warning(
                    "admin token refused %d more time(s) for %s in the minute after the last line",
                    int(entry[1]),
                    client,
                )
                self._seen[client] = [now, 0]  # that was this address's line for a minute
                told += 1
            else:
                del self._seen[client]
        return told

    @property
    def addresses(self) -> int:
        return len(self._seen)


def _printable(path: str, limit: int = 200) -> str:
    """The path as one harmless log token (no newlines from a crafted URL)."""
    text = path.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."
