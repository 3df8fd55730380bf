"""The counter store: values only go up, label sets are one row, restores carry forward."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core import counters
from core.sqlite import migrate_sync


def _db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate_sync(conn)
    return conn


def test_increments_add_up_per_label_set(tmp_path: Path) -> None:
    conn = _db(tmp_path / "a.db")
    counters.add_sync(conn, "vigil_restarts", labels={"reason": "crash", "child": "server"})
    counters.add_sync(conn, "vigil_restarts", 2, labels={"child": "server", "reason": "crash"})
    counters.add_sync(conn, "vigil_restarts", labels={"reason": "oom", "child": "server"})
    values = counters.read_all_sync(conn)
    assert values[("vigil_restarts", "child=server,reason=crash")] == 3
    assert values[("vigil_restarts", "child=server,reason=oom")] == 1
    assert counters.decode_labels("child=server,reason=crash") == {
        "child": "server",
        "reason": "crash",
    }


def test_a_counter_cannot_decrease_or_take_ambiguous_labels(tmp_path: Path) -> None:
    conn = _db(tmp_path / "a.db")
    with pytest.raises(ValueError, match="cannot decrease"):
        counters.add_sync(conn, "vigil_x", -1)
    with pytest.raises(ValueError, match="may not contain"):
        counters.add_sync(conn, "vigil_x", labels={"route": "a,b"})


def test_carry_forward_keeps_the_larger_value(tmp_path: Path) -> None:
    live = _db(tmp_path / "live.db")
    counters.add_sync(live, "vigil_restarts", 10, labels={"reason": "crash"})
    counters.add_sync(live, "vigil_backup_failures", 1)
    restored = _db(tmp_path / "restored.db")
    counters.add_sync(restored, "vigil_restarts", 8, labels={"reason": "crash"})
    counters.add_sync(restored, "vigil_turns", 5)
    assert counters.carry_forward_sync(restored, counters.read_all_sync(live)) == 2
    assert counters.read_all_sync(restored) == {
        ("vigil_restarts", "reason=crash"): 10,
        ("vigil_backup_failures", ""): 1,
        ("vigil_turns", ""): 5,
    }
