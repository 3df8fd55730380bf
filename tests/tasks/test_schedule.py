"""Periodic schedules: the defaults, overrides, and clear errors."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from core.config import ConfigError, Settings
from core.schedule import DEFAULT_SCHEDULE, resolve_schedule
from tests.operator_cli import MAIN, cli_env


def test_default_schedules() -> None:
    schedule = resolve_schedule({})
    assert set(schedule) == set(DEFAULT_SCHEDULE)
    backup, vacuum, cleanup = schedule["backup"], schedule["vacuum"], schedule["cleanup_old_tasks"]
    assert backup and vacuum and cleanup
    assert backup(dt.datetime(2026, 11, 21, 5, 0)) and not backup(dt.datetime(2026, 11, 21, 5, 30))
    assert vacuum(dt.datetime(2026, 11, 22, 4, 0))  # a Sunday
    assert not vacuum(dt.datetime(2026, 11, 21, 4, 0))  # a Saturday
    assert cleanup(dt.datetime(2026, 11, 21, 3, 0)) and not cleanup(dt.datetime(2026, 11, 21, 4, 0))
    refine = schedule["refine_summaries"]
    assert refine and refine(dt.datetime(2026, 11, 21, 7, 30))
    assert not refine(dt.datetime(2026, 11, 21, 7, 35))
    assert "cleanup_idle_sessions" not in schedule  # the governor's job, in the server


def test_overrides_and_off() -> None:
    schedule = resolve_schedule({"backup": "0 */6 * * *", "vacuum": "off"})
    backup = schedule["backup"]
    assert (
        backup
        and backup(dt.datetime(2026, 1, 1, 12, 0))
        and not backup(dt.datetime(2026, 1, 1, 13, 0))
    )
    assert schedule["vacuum"] is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"backups": "0 * * * *"}, "unknown task(s) backups"),
        ({"backup": "every hour"}, "backup: 'every hour' is not a 5-field cron expression"),
        ({"backup": "61 * * * *"}, "backup: '61 * * * *'"),
    ],
)
def test_bad_schedules_name_the_problem(overrides: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match="VIGIL_TASK_SCHEDULE") as info:
        resolve_schedule(overrides)
    assert expected in str(info.value)


@pytest.mark.slow
def test_the_worker_refuses_a_bad_schedule_in_one_line(tsettings: Settings) -> None:
    tsettings.db_path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(MAIN), "worker"],
        env=cli_env(tsettings, task_schedule='{"vacuum": "sometimes"}'),
        cwd=tsettings.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("vigil: VIGIL_TASK_SCHEDULE: vacuum:"), result.stderr
    assert "Traceback" not in result.stderr
