"""The alert state machine: sustain to raise, hold below a clear margin to resolve,
and flapping detection. Pure: ``step(state, level, now=, timing=) -> (state, events)``.

Like Prometheus' ``for:``, a condition must hold on every evaluation for the
sustain time before the alert fires; any evaluation that does not satisfy it
resets the wait. A firing alert resolves only after the value has stayed
below the *clear* level (a margin under the raise level) for the hold time; a
shorter dip, or a value between the clear and the raise level, keeps it
firing. Raw flips of the condition are counted in a window: too many are
reported once as flapping, until the window has been quiet again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Level(Enum):
    """Where a reading stands against one rule."""

    RAISE = "raise"  # at or beyond the raise level
    BETWEEN = "between"  # inside the hysteresis band
    CLEAR = "clear"  # beyond the clear margin
    UNKNOWN = "unknown"  # no reading (e.g. no PSI on this kernel)


class Phase(Enum):
    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVING = "resolving"


@dataclass(frozen=True, slots=True)
class AlertState:
    phase: Phase = Phase.OK
    since: float = 0.0
    flips: tuple[float, ...] = ()
    last_raised: bool | None = None
    flapping: bool = False

    @property
    def is_firing(self) -> bool:
        return self.phase in (Phase.FIRING, Phase.RESOLVING)


@dataclass(frozen=True, slots=True)
class Timing:
    sustain_s: float
    hold_s: float
    flap_window_s: float
    flap_limit: int


RAISED, RESOLVED, FLAPPING, FLAP_END = "raised", "resolved", "flapping", "flap_end"


def _track_flips(state: AlertState, level: Level, now: float, t: Timing) -> AlertState:
    # Old flips age out on every evaluation, also an UNKNOWN one: a signal that
    # went silent (PSI gone, trend not yet covered) must not stay "flapping".
    flips = tuple(f for f in state.flips if now - f < t.flap_window_s)
    if level is Level.UNKNOWN:
        return replace(state, flips=flips)
    raised = level is Level.RAISE
    if state.last_raised is not None and raised != state.last_raised:
        flips = (*flips, now)
    return replace(state, flips=flips, last_raised=raised)


def _advance(state: AlertState, level: Level, now: float, t: Timing) -> tuple[AlertState, str]:
    phase = state.phase
    if phase is Phase.OK:
        if level is Level.RAISE:
            if t.sustain_s <= 0:
                return replace(state, phase=Phase.FIRING, since=now), RAISED
            return replace(state, phase=Phase.PENDING, since=now), ""
        return state, ""
    if phase is Phase.PENDING:
        if level is not Level.RAISE:
            return replace(state, phase=Phase.OK, since=now), ""
        if now - state.since >= t.sustain_s:
            return replace(state, phase=Phase.FIRING, since=now), RAISED
        return state, ""
    if phase is Phase.FIRING:
        if level is Level.CLEAR:
            if t.hold_s <= 0:
                return replace(state, phase=Phase.OK, since=now), RESOLVED
            return replace(state, phase=Phase.RESOLVING, since=now), ""
        return state, ""
    # RESOLVING: only an uninterrupted hold below the clear level resolves.
    if level is Level.CLEAR or level is Level.UNKNOWN:
        if now - state.since >= t.hold_s:
            return replace(state, phase=Phase.OK, since=now), RESOLVED
        return state, ""
    return replace(state, phase=Phase.FIRING), ""


def step(
    state: AlertState, level: Level, *, now: float, timing: Timing
) -> tuple[AlertState, list[str]]:
    """Advance one rule by one evaluation; returns the new state and its events."""
    events: list[str] = []
    state = _track_flips(state, level, now, timing)
    if level is not Level.UNKNOWN or state.phase is Phase.RESOLVING:
        state, event = _advance(state, level, now, timing)
        if event:
            events.append(event)
    if not state.flapping and len(state.flips) >= timing.flap_limit:
        state = replace(state, flapping=True)
        events.append(FLAPPING)
    elif state.flapping and not state.flips:
        state = replace(state, flapping=False)
        events.append(FLAP_END)
    return state, events
