"""The daily scheduled restart: due times across DST, postpone and skip (fake clock)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest

from monitoring.scheduled_restart import AutoRestartManager, decide, next_run

UTC = dt.UTC


def test_next_run_is_today_or_tomorrow() -> None:
    morning = dt.datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    assert next_run(morning, "04:00", tz=UTC) == dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    later = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    assert next_run(later, "04:00", tz=UTC) == dt.datetime(2026, 3, 2, 4, 0, tzinfo=UTC)


BERLIN = ZoneInfo("Europe/Berlin")


def _fixed_offset(wall: dt.datetime) -> dt.datetime:
    """What ``datetime.now().astimezone()`` gives: the offset of that moment, fixed."""
    aware = wall.replace(tzinfo=BERLIN)
    return aware.replace(tzinfo=dt.timezone(aware.utcoffset() or dt.timedelta()))


@pytest.mark.parametrize(
    ("now", "utc_expected"),
    [
        # spring forward (29 March 2026): 04:00 CEST is 02:00 UTC, not 03:00
        (dt.datetime(2026, 3, 28, 4, 0), dt.datetime(2026, 3, 29, 2, 0, tzinfo=UTC)),
        # fall back (25 October 2026): 04:00 CET is 03:00 UTC, not 02:00
        (dt.datetime(2026, 10, 24, 4, 0), dt.datetime(2026, 10, 25, 3, 0, tzinfo=UTC)),
        # the same day, after the change
        (dt.datetime(2026, 3, 29, 1, 0), dt.datetime(2026, 3, 29, 2, 0, tzinfo=UTC)),
    ],
)
def test_next_run_keeps_the_wall_time_across_a_dst_change(
    now: dt.datetime, utc_expected: dt.datetime
) -> None:
    due = next_run(_fixed_offset(now), "04:00", tz=BERLIN)
    assert due == utc_expected
    assert (due.astimezone(BERLIN).hour, due.astimezone(BERLIN).minute) == (4, 0)


def test_the_manager_uses_its_timezone_after_a_skip() -> None:
    manager = AutoRestartManager(
        "04:00",
        max_postpone_s=60,
        in_flight=lambda: 1,
        request_restart=lambda reason, detail: True,
        now=lambda: _fixed_offset(dt.datetime(2026, 3, 28, 3, 0)),
        tz=BERLIN,
    )
    assert manager.next_at == dt.datetime(2026, 3, 28, 3, 0, tzinfo=UTC)
    assert manager.status()["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize(
    ("minutes_after", "in_flight", "expected"),
    [(-1, 0, "wait"), (0, 0, "restart"), (5, 2, "postpone"), (60, 2, "skip"), (60, 0, "restart")],
)
def test_decide(minutes_after: int, in_flight: int, expected: str) -> None:
    due = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    now = due + dt.timedelta(minutes=minutes_after)
    assert decide(now, due, in_flight, max_postpone_s=3600) == expected


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


async def test_scheduled_restart_waits_for_turns_in_flight_then_restarts() -> None:
    clock = Clock(dt.datetime(2026, 3, 1, 3, 59, tzinfo=UTC))
    busy = {"turns": 1}
    requests: list[tuple[str, str]] = []

    def request(reason: str, detail: str) -> bool:
        requests.append((reason, detail))
        return True

    def in_flight() -> int:
        # the turn in flight finishes 20 s after the window opened
        if clock.now >= dt.datetime(2026, 3, 1, 4, 0, 20, tzinfo=UTC):
            busy["turns"] = 0
        return busy["turns"]

    manager = AutoRestartManager(
        "04:00",
        max_postpone_s=600,
        in_flight=in_flight,
        request_restart=request,
        now=clock,
        sleep=clock.sleep,
        tz=UTC,
    )
    await manager.run()

    assert len(requests) == 1
    reason, detail = requests[0]
    assert reason == "scheduled" and "postponed" in detail
    assert clock.now >= dt.datetime(2026, 3, 1, 4, 0, 20, tzinfo=UTC)
    assert clock.now < dt.datetime(2026, 3, 1, 4, 1, tzinfo=UTC)


async def test_scheduled_restart_is_skipped_for_the_day_after_the_postpone_limit() -> None:
    clock = Clock(dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC))
    requests: list[str] = []
    manager = AutoRestartManager(
        "04:00",
        max_postpone_s=60,
        in_flight=lambda: 3,
        request_restart=lambda reason, detail: bool(requests.append(reason)),
        now=clock,
        sleep=clock.sleep,
        tz=UTC,
    )
    manager.next_at = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    actions = [await manager.step()]
    while actions[-1] != "skip":
        await clock.sleep(5)
        actions.append(await manager.step())

    assert requests == []
    assert actions[0] == "postpone" and actions[-1] == "skip"
    assert manager.last_skipped == dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    assert manager.next_at == dt.datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
    assert manager.status()["next_at_iso"].startswith("2026-03-02T04:00")


def test_no_schedule_means_no_next_restart() -> None:
    manager = AutoRestartManager(
        None, max_postpone_s=60, in_flight=lambda: 0, request_restart=lambda r, d: True
    )
    assert manager.next_at is None and manager.status()["next_at_iso"] is None


def test_next_run_in_host_local_time_across_a_dst_change() -> None:
    """The default (no ``tz``) is the host's zone: run under TZ=Europe/Berlin."""
    code = (
        "import datetime as dt; from monitoring.scheduled_restart import next_run; "
        "now = dt.datetime(2026, 3, 28, 4, 0).astimezone(); "
        "print(next_run(now, '04:00').astimezone(dt.UTC).isoformat())"
    )
    env = {**os.environ, "TZ": "Europe/Berlin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "2026-03-29T02:00:00+00:00"
