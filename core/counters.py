"""Monotonic counters kept in the ``counters`` table.

Prometheus reads a counter that goes down as a reset, so anything Vigil
exports as ``*_total`` must only ever go up, across restarts, pruning and
restores. Each counter is a row (name, labels) whose value is only ever
increased: by :func:`add_sync` (one UPSERT inside the caller's transaction,
from any process: server, worker, supervisor, CLI), and by :func:`carry_forward_sync`
after a restore, which keeps the larger of the two values for every row.

Names are the metric family name without ``_total`` (``vigil_restarts``);
labels are encoded as ``key=value`` pairs joined by ``,`` in key order, so one
label set always gives one row. Stdlib only: the supervisor imports it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping

Key = tuple[str, str]

UPSERT = (
    "INSERT INTO counters (name, labels, value, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value, "
    "updated_at = excluded.updated_at"
)


def encode_labels(labels: Mapping[str, str] | None) -> str:
    """``{"reason": "crash"}`` -> ``"reason=crash"``; stable for any key order."""
    if not labels:
        return ""
    for key, value in labels.items():
        if any(c in key or c in str(value) for c in ",="):
            raise ValueError(f"counter label {key}={value!r} may not contain ',' or '='")
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def decode_labels(encoded: str) -> dict[str, str]:
    if not encoded:
        return {}
    return dict(pair.split("=", 1) for pair in encoded.split(","))


def add_sync(
    conn: sqlite3.Connection,
    name: str,
    amount: float = 1.0,
    labels: Mapping[str, str] | None = None,
    *,
    now: float | None = None,
) -> None:
    """Increase one counter by ``amount`` (>= 0) in the caller's transaction."""
    if amount < 0:
        raise ValueError(f"counter {name} cannot decrease (amount {amount})")
    conn.execute(UPSERT, (name, encode_labels(labels), amount, time.time() if now is None else now))


def read_all_sync(conn: sqlite3.Connection) -> dict[Key, float]:
    """Every counter: ``{(name, encoded_labels): value}``."""
    return {(n, lab): v for n, lab, v in conn.execute("SELECT name, labels, value FROM counters")}


def carry_forward_sync(conn: sqlite3.Connection, previous: Mapping[Key, float]) -> int:
    """After a restore: raise each counter to at least its ``previous`` value.

    ``previous`` is :func:`read_all_sync` of the database that was replaced.
    Returns the number of rows raised or added.
    """
    now = time.time()
    changed = 0
    current = read_all_sync(conn)
    for (name, labels), value in previous.items():
        if value > current.get((name, labels), 0.0):
            conn.execute(
                "INSERT INTO counters (name, labels, value, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, labels) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (name, labels, value, now),
            )
            changed += 1
    return changed
