"""Retention over a synthetic calendar: exactly the right snapshots survive."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from core.backups.backup import Snapshot, create_backup, list_snapshots
from core.backups.retention import RetentionPolicy, plan_retention, prune_snapshots, select_prunable
from core.config import Settings
from tests.operator_cli import fill


def at(*parts: int) -> float:
    return dt.datetime(*parts, tzinfo=dt.UTC).timestamp()


def name_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("auto_%Y%m%d_%H%M")


def hourly_calendar(start: float, end: float) -> list[tuple[str, float]]:
    items, t = [], start
    while t <= end:
        items.append((name_of(t), t))
        t += 3600
    return items


def test_fourteen_months_of_hourly_backups_keep_24_7_4_12() -> None:
    items = hourly_calendar(at(2025, 1, 1), at(2026, 3, 1))
    keep = plan_retention(items, RetentionPolicy(hourly=24, daily=7, weekly=4, monthly=12))

    expected = {name_of(at(2026, 3, 1))}  # the newest (Sunday, ISO week 9, March)
    expected |= {name_of(at(2026, 2, 28, h)) for h in range(1, 24)}  # 23 more hours
    expected |= {name_of(at(2026, 2, d, 23)) for d in (27, 26, 25, 24, 23)}  # days
    expected |= {name_of(at(2026, 2, d, 23)) for d in (22, 15, 8)}  # Sundays of weeks 8, 7, 6
    month_ends = [(2026, 1, 31), (2025, 12, 31), (2025, 11, 30), (2025, 10, 31)]
    month_ends += [(2025, 9, 30), (2025, 8, 31), (2025, 7, 31), (2025, 6, 30)]
    month_ends += [(2025, 5, 31), (2025, 4, 30)]
    expected |= {name_of(at(y, m, d, 23)) for y, m, d in month_ends}

    assert keep == expected
    assert len(keep) == 42


def test_newest_of_each_hour_wins_and_zero_rules_keep_only_the_newest() -> None:
    items = [
        ("a", at(2026, 5, 1, 10, 0)),
        ("b", at(2026, 5, 1, 10, 30)),
        ("c", at(2026, 5, 1, 11, 5)),
    ]
    assert plan_retention(items, RetentionPolicy(hourly=24, daily=0, weekly=0, monthly=0)) == {
        "b",
        "c",
    }
    assert plan_retention(items, RetentionPolicy(0, 0, 0, 0)) == {"c"}
    assert plan_retention([], RetentionPolicy()) == set()


def _snap(name: str, ts: float, kind: str) -> Snapshot:
    return Snapshot(name, ts, kind, 1, 1, "x", 1, 0, 0, 0.0, Path("/nonexistent"))


def test_only_automatic_snapshots_are_pruned_unless_keep_is_given() -> None:
    snaps = [_snap(n, t, "auto") for n, t in hourly_calendar(at(2026, 1, 1), at(2026, 1, 3))]
    snaps.append(_snap("manual-old", at(2020, 1, 1), "manual"))
    policy = RetentionPolicy(hourly=2, daily=0, weekly=0, monthly=0)
    doomed = {s.name for s in select_prunable(snaps, policy)}
    assert "manual-old" not in doomed
    assert len(doomed) == len(snaps) - 1 - 2
    newest_three = select_prunable(snaps, policy, keep_newest=3)
    assert "manual-old" in {s.name for s in newest_three}
    assert len(newest_three) == len(snaps) - 3


def test_prune_deletes_files_of_real_snapshots(tsettings: Settings) -> None:
    fill(tsettings.db_path, 20)
    for hour in (1, 2, 3):
        create_backup(
            tsettings.db_path,
            tsettings.backups_dir,
            kind="auto",
            now=at(2026, 1, 1, hour),
            name=f"auto-{hour}",
        )
    create_backup(tsettings.db_path, tsettings.backups_dir, name="keepme", now=at(2025, 1, 1))
    policy = RetentionPolicy(hourly=1, daily=0, weekly=0, monthly=0)
    assert [s.name for s in prune_snapshots(tsettings.backups_dir, policy, dry_run=True)] == [
        "auto-2",
        "auto-1",
    ]
    assert len(list_snapshots(tsettings.backups_dir)) == 4  # dry run deleted nothing
    prune_snapshots(tsettings.backups_dir, policy)
    assert [s.name for s in list_snapshots(tsettings.backups_dir)] == ["auto-3", "keepme"]
    assert sorted(p.name for p in tsettings.backups_dir.iterdir() if p.name != ".backup.lock") == [
        "auto-3.db.gz",
        "auto-3.json",
        "keepme.db.gz",
        "keepme.json",
    ]
