"""Is the Telegram connection alive? A pure judgement from what the gateway observed.

Telethon-free. An open socket is not enough: Telethon keeps ``is_connected()``
true while it reconnects on its own, its update task can die while the socket
stays open (then nothing is ever delivered: *deaf*), and a call started in its
reconnect window may never return. So the gateway looks, every tick, at
what it can see cheaply — is the client connected, is the update task alive,
how old is the newest sign of life (a successful call or probe, an update) —
and makes a real call (``get_me``) only when that evidence is stale or
something looked wrong (a call failed on the transport or timed out).
"""

from __future__ import annotations

from dataclasses import dataclass

# The states /telegram/status and /health report.
STATES = (
    "starting",  # first connect after start, within START_GRACE_S: neutral in /health
    "connecting",  # first connect is taking longer than the grace
    "connected",
    "disconnected",  # the connection is down or calls fail: being rebuilt with backoff
    "deaf",  # connected, but Telethon's update task died: nothing would be delivered
    "incompatible",  # the server speaks another protocol layer than our Telethon
    "unauthorized",  # not logged in (or logged out elsewhere)
    "not_configured",
)
START_GRACE_S = 15.0  # how long a normal start may take before "connecting" is reported
TICK_S = 1.0  # how often the cheap signals are looked at
MAX_BACKOFF_S = 8.0  # a server that is back is found within seconds (target: reply <= 10 s)
INCOMPATIBLE_BACKOFF_S = 600.0  # another server layer will not change in seconds


@dataclass(frozen=True, slots=True)
class Signals:
    """What the gateway saw at ``now`` (times are wall-clock seconds, None: never)."""

    now: float
    is_connected: bool
    is_receiving: bool  # Telethon's update task is alive
    last_ok_call_at: float | None
    last_update_at: float | None
    connected_since: float | None
    is_suspect: bool = False  # a call failed on the transport or timed out since the last probe


def judge(signals: Signals, *, probe_interval_s: float) -> str:
    """``ok``, ``probe`` (make a real call now), ``disconnected`` or ``deaf``."""
    if not signals.is_connected:
        return "disconnected"
    if not signals.is_receiving:
        return "deaf"
    if signals.is_suspect:
        return "probe"
    evidence = [
        t
        for t in (signals.last_ok_call_at, signals.last_update_at, signals.connected_since)
        if t is not None
    ]
    if not evidence or signals.now - max(evidence) >= probe_interval_s:
        return "probe"
    return "ok"


def next_backoff(current: float, *, state: str) -> float:
    """The wait after this failed attempt doubles, capped (long for another layer)."""
    cap = INCOMPATIBLE_BACKOFF_S if state == "incompatible" else MAX_BACKOFF_S
    return min(current * 2, cap)
