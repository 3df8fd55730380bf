"""Bench: the budget check before a turn (``Budgets.check``), on a month of usage rows.

``python bench/bench_budgets.py``: 43,200 usage rows over 30 days for 50 users
(one call a minute), then 500 checks of one user without and with budgets.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.budgets import Budgets
from core.database import Database


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "system.db")
        await db.open()
        now = time.time()
        async with db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO usage (at, chat_id, user_id, kind, model, prompt_tokens,"
                " completion_tokens, outcome) VALUES (?, 'c', ?, 'turn', 'm', 100, 50, 'ok')",
                [(now - i * 60, f"tg:{i % 50}") for i in range(30 * 24 * 60)],
            )
        cases = (
            ("no budgets", Budgets(db)),
            ("day + month budget", Budgets(db, user_day=10**9, user_month=10**9)),
        )
        for label, budgets in cases:
            times = []
            for _ in range(500):
                started = time.perf_counter()
                await budgets.check("tg:7")
                times.append(time.perf_counter() - started)
            times.sort()
            print(f"{label}: p50 {times[250] * 1000:.3f} ms, p95 {times[475] * 1000:.3f} ms")
        await db.close()


if __name__ == "__main__":
    asyncio.run(main())
