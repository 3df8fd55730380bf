"""Backup retention: which automatic snapshots to keep (grandfather-father-son).

``plan_retention`` is a pure function of (snapshot times, policy): it keeps
the newest snapshot of each of the last N distinct hours, days, ISO weeks and
months (UTC), like ``restic forget --keep-hourly ...``; a snapshot may count
for several rules at once. The newest snapshot is always kept. Only automatic
snapshots are pruned by policy; manual and pre-restore ones stay until the
operator removes them (``cleanup --keep N``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.backups.backup import Snapshot, delete_snapshot, list_snapshots
from core.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    hourly: int = 24
    daily: int = 7
    weekly: int = 4
    monthly: int = 12

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            hourly=settings.backup_keep_hourly,
            daily=settings.backup_keep_daily,
            weekly=settings.backup_keep_weekly,
            monthly=settings.backup_keep_monthly,
        )


def _hour(t: dt.datetime) -> tuple[int, ...]:
    return (t.year, t.month, t.day, t.hour)


def _day(t: dt.datetime) -> tuple[int, ...]:
    return (t.year, t.month, t.day)


def _week(t: dt.datetime) -> tuple[int, ...]:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: dt.datetime) -> tuple[int, ...]:
    return (t.year, t.month)


def plan_retention(items: Iterable[tuple[str, float]], policy: RetentionPolicy) -> set[str]:
    """Names to keep among (name, unix time) pairs."""
    ordered = sorted(items, key=lambda item: (item[1], item[0]), reverse=True)
    if not ordered:
        return set()
    keep = {ordered[0][0]}
    rules: list[tuple[int, Callable[[dt.datetime], tuple[int, ...]]]] = [
        (policy.hourly, _hour),
        (policy.daily, _day),
        (policy.weekly, _week),
        (policy.monthly, _month),
    ]
    for count, bucket in rules:
        seen: set[tuple[int, ...]] = set()
        for name, at in ordered:
            if len(seen) >= count:
                break
            key = bucket(dt.datetime.fromtimestamp(at, dt.UTC))
            if key not in seen:
                seen.add(key)
                keep.add(name)
    return keep


def select_prunable(
    snapshots: Sequence[Snapshot], policy: RetentionPolicy, *, keep_newest: int | None = None
) -> list[Snapshot]:
    """Snapshots to delete: automatic ones outside the policy, or beyond ``keep_newest``."""
    if keep_newest is not None:
        ordered = sorted(snapshots, key=lambda s: (s.created_at, s.name), reverse=True)
        return list(ordered[max(0, keep_newest) :])
    auto = [s for s in snapshots if s.kind == "auto"]
    keep = plan_retention(((s.name, s.created_at) for s in auto), policy)
    return [s for s in auto if s.name not in keep]


def prune_snapshots(
    backups_dir: Path,
    policy: RetentionPolicy,
    *,
    keep_newest: int | None = None,
    dry_run: bool = False,
) -> list[Snapshot]:
    """Delete what :func:`select_prunable` picks; returns the deleted (or would-be) list."""
    doomed = select_prunable(list_snapshots(backups_dir), policy, keep_newest=keep_newest)
    if not dry_run:
        for snapshot in doomed:
            delete_snapshot(snapshot)
        if doomed:
            log.info("retention removed %d snapshot(s)", len(doomed))
    return doomed
