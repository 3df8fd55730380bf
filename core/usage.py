"""Usage accounting: one ``usage`` row per model call, written off the turn's path.

Every call to the model (a chat turn, kind ``turn``; a summary refinement,
kind ``summary``) is measured by a :class:`CallMeter` the model client fills
in: the model's own token counts from its ``usage`` chunk (requested with
``stream_options.include_usage``), the time to the first token. When the
server sends no usage, the tokens are estimated (``estimate_tokens``) and the
row is marked ``estimated``.

:class:`UsageRecorder` keeps finished calls in memory and writes them in one
transaction per flush (the metrics flush loop, every
``VIGIL_METRICS_FLUSH_INTERVAL_S``, at shutdown, and before any read of the
table), so a turn never waits for a usage write. It also counts the
Prometheus series (``vigil_llm_tokens``, ``vigil_llm_requests`` by outcome and
model, the time-to-first-token histogram).

Reading: :func:`summary` (per-user and per-day aggregates for ``GET /usage``
and ``main.py usage``), :func:`user_totals` (``/usage`` in a chat). Daily
roll-up and retention: :func:`rollup_and_expire` (the daily cleanup task).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import StorageError
from core.memory import estimate_tokens

if TYPE_CHECKING:
    from core.config import Settings
    from core.counter_buffer import CounterBuffer
    from core.database import Database
    from core.llm import LLMClient

log = logging.getLogger(__name__)

KINDS = ("turn", "summary", "transcription")
OK = "ok"
CANCELLED = "cancelled"
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, float("inf"))
INSERT = (
    "INSERT INTO usage (at, chat_id, user_id, kind, model, prompt_tokens, completion_tokens,"
    " estimated, latency_ms, ttft_ms, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
MAX_PENDING = 100_000  # a database down for long: the oldest unwritten rows go first


@dataclass(slots=True)
class CallMeter:
    """Filled in by ``LLMClient.stream`` for one call."""

    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str = ""


@dataclass(frozen=True, slots=True)
class Prices:
    """Per million tokens, no currency; None: not set (no cost shown)."""

    input_per_1m: float | None = None
    output_per_1m: float | None = None

    @property
    def set(self) -> bool:
        return self.input_per_1m is not None or self.output_per_1m is not None

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        if not self.set:
            return None
        return (
            prompt_tokens * (self.input_per_1m or 0.0)
            + completion_tokens * (self.output_per_1m or 0.0)
        ) / 1_000_000


def prices_from(settings: Settings) -> Prices:
    return Prices(settings.llm_price_input_per_1m, settings.llm_price_output_per_1m)


class UsageRecorder:
    """Finished calls in memory, written in batches."""

    def __init__(self, counters: CounterBuffer | None = None, prices: Prices | None = None) -> None:
        self.counters = counters
        self.prices = prices or Prices()
        self.pending: list[tuple[Any, ...]] = []
        self.writing: list[tuple[Any, ...]] = []  # the batch a flush is committing
        self._flushing = asyncio.Lock()  # one batch at a time; a caller waits for the one before
        self.written = 0
        self.dropped = 0

    def record(
        self,
        meter: CallMeter,
        *,
        chat_id: str,
        user_id: str | None,
        kind: str,
        outcome: str,
        prompt_estimate: int,
        completion_text: str,
    ) -> None:
        """One finished call (any outcome). Cheap: no I/O."""
        now = time.monotonic()
        estimated = meter.prompt_tokens is None or meter.completion_tokens is None
        prompt = meter.prompt_tokens if meter.prompt_tokens is not None else prompt_estimate
        if meter.completion_tokens is not None:
            completion = meter.completion_tokens
        else:
            completion = estimate_tokens(completion_text) if completion_text else 0
        ttft = None if meter.first_token is None else meter.first_token - meter.started
        latency = now - meter.started
        model = meter.model or "unknown"
        self.pending.append(
            (
                time.time(),
                chat_id,
                user_id,
                kind,
                model,
                prompt,
                completion,
                int(estimated),
                round(latency * 1000, 1),
                None if ttft is None else round(ttft * 1000, 1),
                outcome,
            )
        )
        if len(self.pending) > MAX_PENDING:
            excess = len(self.pending) - MAX_PENDING
            del self.pending[:excess]
            self.dropped += excess
        counters = self.counters
        if counters is not None:
            counters.add("vigil_llm_requests", 1.0, (("model", model), ("outcome", outcome)))
            if prompt:
                counters.add("vigil_llm_tokens", prompt, (("kind", "prompt"), ("model", model)))
            if completion:
                counters.add(
                    "vigil_llm_tokens", completion, (("kind", "completion"), ("model", model))
                )
            if ttft is not None:
                counters.observe(
                    "vigil_llm_time_to_first_token_seconds", ttft, TTFT_BUCKETS, (("model", model),)
                )

    def unwritten(self) -> list[tuple[Any, ...]]:
        """Rows not yet known to be in the table: the batch being written, then the rest.

        A reader that takes these BEFORE it queries the table never misses a row
        (at worst, one committed meanwhile is counted twice: a budget errs strict).
        """
        return self.writing + self.pending

    async def flush(self, db: Database) -> int:
        """Write what is pending in one transaction; kept for the next try on failure."""
        async with self._flushing:
            return await self._flush(db)

    async def _flush(self, db: Database) -> int:
        if not self.pending:
            return 0
        batch, self.pending = self.pending, []
        self.writing = batch  # still counted by budgets while the transaction runs
        try:
            async with db.transaction() as tx:
                await tx.executemany(INSERT, batch)
        except StorageError as exc:
            self.pending[:0] = batch
            log.warning("could not store %d usage row(s): %s", len(batch), exc)
            return 0
        finally:
            self.writing = []
        self.written += len(batch)
        return len(batch)


def metered_summarize(
    llm: LLMClient, recorder: UsageRecorder, chat_id: str, user_id: str | None
) -> Callable[[str], Awaitable[str]]:
    """``llm.summarize`` whose call is recorded as a ``summary`` usage row."""
    from core.errors import LLMError

    async def summarize(request: str) -> str:
        meter, outcome, text = CallMeter(), "error", ""
        try:
            text = await llm.summarize(request, meter=meter)
            outcome = OK
            return text
        except LLMError as exc:
            outcome = exc.code
            raise
        except asyncio.CancelledError:
            outcome = CANCELLED
            raise
        finally:
            recorder.record(
                meter,
                chat_id=chat_id,
                user_id=user_id,
                kind="summary",
                outcome=outcome,
                prompt_estimate=estimate_tokens(request),
                completion_text=text,
            )

    return summarize


# --- reading --------------------------------------------------------------------------
class Reader(Protocol):
    """What the readers need: a ``Database``, or :class:`FileReader` for the CLI."""

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None: ...


class FileReader:
    """A read-only connection to the database file (the CLI, beside a running server)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        self.conn = conn

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, params).fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row


def day_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def day_start(day: str) -> float:
    return dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()


def _where(since: float | None, user: str | None, chat: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = ["1 = 1"]
    params: list[Any] = []
    if since is not None:
        clauses.append("at >= ?")
        params.append(since)
    if user is not None:
        clauses.append("user_id IS ?")
        params.append(user)
    if chat is not None:
        clauses.append("chat_id = ?")
        params.append(chat)
    return " AND ".join(clauses), params


def _daily_where(since: float | None, user: str | None, chat: str | None) -> tuple[str, list[Any]]:
    """usage_daily rows for days no raw row covers any more (rolled up, then expired)."""
    clauses = [
        "day < COALESCE((SELECT strftime('%Y-%m-%d', MIN(at), 'unixepoch') FROM usage), '9')"
    ]
    params: list[Any] = []
    if since is not None:
        clauses.append("day >= ?")
        params.append(day_of(since))
    if user is not None:
        clauses.append("user_id = ?")
        params.append(user)
    if chat is not None:
        clauses.append("chat_id = ?")
        params.append(chat)
    return " AND ".join(clauses), params


AGG = (
    "COUNT(*) AS requests, SUM(prompt_tokens) AS prompt_tokens,"
    " SUM(completion_tokens) AS completion_tokens, SUM(estimated) AS estimated_requests"
)
DAILY_AGG = (
    "SUM(requests) AS requests, SUM(prompt_tokens) AS prompt_tokens,"
    " SUM(completion_tokens) AS completion_tokens,"
    " SUM(estimated_requests) AS estimated_requests"
)


def _merge(rows: Sequence[sqlite3.Row], key: str, prices: Prices) -> list[dict[str, Any]]:
    merged: dict[Any, dict[str, Any]] = {}
    for row in rows:
        entry = merged.setdefault(
            row[key],
            {
                key: row[key],
                "requests": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "estimated_requests": 0,
            },
        )
        for name in ("requests", "prompt_tokens", "completion_tokens", "estimated_requests"):
            entry[name] += int(row[name] or 0)
    out = []
    for entry in merged.values():
        entry["total_tokens"] = entry["prompt_tokens"] + entry["completion_tokens"]
        cost = prices.cost(entry["prompt_tokens"], entry["completion_tokens"])
        if cost is not None:
            entry["cost"] = round(cost, 6)
        out.append(entry)
    return out


async def summary(
    db: Reader,
    *,
    since: float | None = None,
    user: str | None = None,
    chat: str | None = None,
    prices: Prices | None = None,
) -> dict[str, Any]:
    """Per-user and per-day aggregates (raw rows, plus the roll-up of expired days)."""
    prices = prices or Prices()
    where, params = _where(since, user, chat)
    dwhere, dparams = _daily_where(since, user, chat)
    by_user = await db.fetchall(
        f"SELECT COALESCE(user_id, '') AS user, {AGG} FROM usage WHERE {where} GROUP BY 1",
        params,
    ) + await db.fetchall(
        f"SELECT user_id AS user, {DAILY_AGG} FROM usage_daily WHERE {dwhere} GROUP BY 1",
        dparams,
    )
    by_day = await db.fetchall(
        f"SELECT strftime('%Y-%m-%d', at, 'unixepoch') AS day, {AGG} FROM usage"
        f" WHERE {where} GROUP BY 1",
        params,
    ) + await db.fetchall(
        f"SELECT day, {DAILY_AGG} FROM usage_daily WHERE {dwhere} GROUP BY 1", dparams
    )
    users = sorted(_merge(by_user, "user", prices), key=lambda e: -e["total_tokens"])
    days = sorted(_merge(by_day, "day", prices), key=lambda e: e["day"])
    total: dict[str, Any] = {
        name: sum(e[name] for e in users)
        for name in (
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "estimated_requests",
        )
    }
    cost = prices.cost(total["prompt_tokens"], total["completion_tokens"])
    if cost is not None:
        total["cost"] = round(cost, 6)
    return {
        "since": since,
        "user": user,
        "chat": chat,
        "prices_set": prices.set,
        "total": total,
        "users": users,
        "days": days,
    }


async def user_totals(db: Reader, user: str, since: float) -> tuple[int, int]:
    """(prompt, completion) tokens of ``user`` since ``since`` (raw rows only)."""
    row = await db.fetchone(
        "SELECT COALESCE(SUM(prompt_tokens), 0) AS p, COALESCE(SUM(completion_tokens), 0) AS c"
        " FROM usage WHERE user_id = ? AND at >= ?",
        (user, since),
    )
    return (int(row["p"]), int(row["c"])) if row is not None else (0, 0)


async def hourly_tokens(db: Reader, since: float) -> list[dict[str, Any]]:
    """Tokens per UTC hour since ``since`` (the dashboard chart)."""
    rows = await db.fetchall(
        "SELECT CAST(at / 3600 AS INTEGER) * 3600 AS hour, SUM(prompt_tokens) AS prompt,"
        " SUM(completion_tokens) AS completion FROM usage WHERE at >= ? GROUP BY 1 ORDER BY 1",
        (since,),
    )
    return [
        {"hour": int(r["hour"]), "prompt": int(r["prompt"]), "completion": int(r["completion"])}
        for r in rows
    ]


# --- the daily cleanup ----------------------------------------------------------------
def rollup_and_expire(
    conn: sqlite3.Connection, *, days: int, now: float | None = None
) -> dict[str, int]:
    """Roll every finished day's raw rows into ``usage_daily``; delete raw days past ``days``.

    Days are UTC. A day is rolled up whole (replacing its roll-up, so running
    twice is harmless) and deleted whole, so a day is never half raw, half rolled.
    """
    now = time.time() if now is None else now
    today = day_start(day_of(now))
    cutoff = today - days * 86400
    conn.execute("BEGIN IMMEDIATE")
    try:
        rolled = conn.execute(
            "INSERT OR REPLACE INTO usage_daily (day, user_id, chat_id, kind, model, requests,"
            " prompt_tokens, completion_tokens, estimated_requests)"
            " SELECT strftime('%Y-%m-%d', at, 'unixepoch'), COALESCE(user_id, ''), chat_id, kind,"
            " model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(estimated)"
            " FROM usage WHERE at < ? GROUP BY 1, 2, 3, 4, 5",
            (today,),
        ).rowcount
        deleted = conn.execute("DELETE FROM usage WHERE at < ?", (cutoff,)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info(
        "usage: %d daily roll-up row(s) written, %d raw row(s) older than %d days deleted",
        rolled,
        deleted,
        days,
    )
    return {"rolled_up": rolled, "deleted": deleted, "days": days}


# --- parameters of the surfaces -----------------------------------------------------
DEFAULT_SINCE_DAYS = 30
MAX_USER_ID_CHARS = 80  # "api:" + 64 characters, with room
UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str | None, now: float | None = None) -> float:
    """``7d`` / ``24h`` / ``30m`` / ``2w`` ago, a date ``2026-12-01`` (UTC), an ISO
    time, or Unix seconds; default the last 30 days. ValueError naming the forms."""
    now = time.time() if now is None else now
    if text is None or not text.strip():
        return now - DEFAULT_SINCE_DAYS * 86400
    value = text.strip()
    unit = UNITS.get(value[-1:].lower())
    if unit is not None and value[:-1].isdigit() and len(value) <= 8:
        return now - int(value[:-1]) * unit
    if value.replace(".", "", 1).isdigit() and len(value) <= 20:
        return float(value)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"since {value[:40]!r} is not a time: use 7d, 24h, 30m, 2w, a date such as "
            "2026-12-01, an ISO time or Unix seconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def check_user(user: str | None) -> str | None:
    """A user id as stored (``tg:42``, ``api:ada``, ``admin``); ValueError when not one."""
    if user is None:
        return None
    if not 1 <= len(user) <= MAX_USER_ID_CHARS or not user.isprintable():
        raise ValueError(
            f"user must be a user id such as tg:123456, api:ada or admin "
            f"(1-{MAX_USER_ID_CHARS} printable characters)"
        )
    return user
