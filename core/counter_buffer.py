"""The server's counters: counted in memory, kept in the ``counters`` table.

Counting a request or a turn must not cost a database write, so the server
counts into a :class:`CounterBuffer` and flushes the deltas every few
seconds (and at shutdown) as additive UPSERTs (:mod:`core.counters`); other
processes (the supervisor, the worker, the CLI) add to the same rows
directly. What ``/metrics`` exports is the stored value plus what is not
flushed yet, and never less than what this process exported before, so a
counter only ever goes up within a process and starts where the previous
one stopped.

Three ways in:

- :meth:`CounterBuffer.add` for things counted here (HTTP requests, auth
  failures, errors);
- :meth:`CounterBuffer.observe` for histograms (one bucket row per ``le``,
  plus ``_sum`` and ``_count``; not cumulative in storage);
- :meth:`CounterBuffer.track` for the counters other parts already keep as
  plain ints (``ChatService.stats.turns``, ``LLMClient.requests``...): the
  buffer polls them and adds what they grew by since the last poll.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from core import counters
from core.errors import StorageError

if TYPE_CHECKING:
    from core.database import Database

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs
Key = tuple[str, Labels]


def labels_of(encoded: str) -> Labels:
    return tuple(sorted(counters.decode_labels(encoded).items()))


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class CounterBuffer:
    """In-memory deltas over the stored counters of one database."""

    def __init__(self) -> None:
        self.stored: dict[Key, float] = {}
        self.pending: dict[Key, float] = {}
        self.floor: dict[Key, float] = {}
        self.tracked: list[tuple[str, Labels, Callable[[], float], list[float]]] = []
        self.flushes = 0
        self.flush_errors = 0
        self._histogram_keys: dict[Key, tuple[list[Key], Key, Key]] = {}

    # --- counting ---------------------------------------------------------------
    def add(self, name: str, amount: float = 1.0, labels: Labels = ()) -> None:
        """Count ``amount`` (>= 0) on ``name``; ``labels`` sorted by key."""
        key = (name, labels)
        self.pending[key] = self.pending.get(key, 0.0) + amount

    def observe(
        self, name: str, value: float, buckets: tuple[float, ...], labels: Labels = ()
    ) -> None:
        """One observation of histogram ``name``; ``buckets`` ascending, ending in inf.

        The bucket must be the same for one ``name`` every time.
        """
        keys = self._histogram_keys.get((name, labels))
        if keys is None:  # once per label set: bounded like the label sets themselves
            per_bound = [
                (name + "_bucket", tuple(sorted((*labels, ("le", _le(b)))))) for b in buckets
            ]
            keys = (per_bound, (name + "_sum", labels), (name + "_count", labels))
            self._histogram_keys[(name, labels)] = keys
        per_bound, sum_key, count_key = keys
        bucket = per_bound[min(bisect.bisect_left(buckets, value), len(buckets) - 1)]
        pending = self.pending
        pending[bucket] = pending.get(bucket, 0.0) + 1.0
        pending[sum_key] = pending.get(sum_key, 0.0) + max(0.0, value)
        pending[count_key] = pending.get(count_key, 0.0) + 1.0

    def track(self, name: str, read: Callable[[], float], labels: Labels = ()) -> None:
        """Poll ``read()`` (a count that only grows in this process) into ``name``."""
        self.tracked.append((name, labels, read, [float(read())]))

    def poll(self) -> None:
        """Move what the tracked counts grew by into the pending deltas."""
        for name, labels, read, last in self.tracked:
            try:
                now = float(read())
            except Exception:  # someone else's attribute; a broken one must not stop the rest
                log.exception("reading counter %s failed", name)
                continue
            # Less than before: the part was rebuilt and counts from 0 again.
            grown = now - last[0] if now >= last[0] else now
            if grown > 0:
                self.add(name, grown, labels)
            last[0] = now

    # --- the database -------------------------------------------------------------
    async def load(self, db: Database) -> None:
        """The stored values (at start, and after each flush to see other processes)."""
        rows = await db.fetchall("SELECT name, labels, value FROM counters")
        self.stored = {(r["name"], labels_of(r["labels"])): float(r["value"]) for r in rows}

    async def flush(self, db: Database) -> int:
        """Write the pending deltas in one transaction; kept for the next try on failure."""
        self.poll()
        batch, self.pending = self.pending, {}
        rows = []
        for (name, labels), amount in batch.items():
            try:
                rows.append((name, counters.encode_labels(dict(labels)), amount, time.time()))
            except ValueError as exc:  # never stored, so never retried either
                log.error("counter %s dropped: %s", name, exc)
        try:
            if rows:
                async with db.transaction() as tx:
                    await tx.executemany(counters.UPSERT, rows)
        except StorageError as exc:
            self.flush_errors += 1
            for key, amount in batch.items():  # counted meanwhile + not written
                self.pending[key] = self.pending.get(key, 0.0) + amount
            log.warning("could not store %d counter(s): %s", len(batch), exc)
            return 0
        self.flushes += 1
        try:
            await self.load(db)
        except StorageError as exc:  # written: count them as stored until the next read
            for key, amount in batch.items():
                self.stored[key] = self.stored.get(key, 0.0) + amount
            log.warning("could not read the counters back: %s", exc)
        return len(rows)

    # --- reading ----------------------------------------------------------------------
    def values(self) -> dict[Key, float]:
        """Stored + pending, never below what was read before (the export)."""
        self.poll()
        merged = dict(self.stored)
        for key, amount in self.pending.items():
            merged[key] = merged.get(key, 0.0) + amount
        for key, value in merged.items():
            floor = self.floor.get(key, 0.0)
            if value < floor:  # a replaced database: never report a decrease
                merged[key] = floor
            else:
                self.floor[key] = value
        for key, floor in self.floor.items():
            merged.setdefault(key, floor)
        return merged

    def value(self, name: str, labels: Labels = ()) -> float:
        return self.values().get((name, labels), 0.0)


def family(values: Mapping[Key, float], name: str) -> Iterable[tuple[Labels, float]]:
    """The rows of one counter name, sorted by labels."""
    return sorted((labels, v) for (n, labels), v in values.items() if n == name)
