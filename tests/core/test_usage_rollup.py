"""The daily roll-up and retention of usage rows, and the readers over both tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import usage
from core.database import Database
from core.sqlite import connect_sync

DAY = 86400.0
NOW = usage.day_start("2026-12-04") + 12 * 3600  # noon UTC


def insert(db_path: Path, rows: list[tuple[float, str, str, int, int]]) -> None:
    conn = connect_sync(db_path)
    try:
        conn.executemany(
            "INSERT INTO usage (at, chat_id, user_id, kind, model, prompt_tokens,"
            " completion_tokens, estimated, latency_ms, ttft_ms, outcome)"
            " VALUES (?, ?, ?, 'turn', 'm', ?, ?, 0, 1.0, 0.5, 'ok')",
            rows,
        )
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "vigil.db")
    await database.open()
    yield database  # type: ignore[misc]
    await database.close()


async def test_old_days_are_rolled_up_then_deleted_and_totals_do_not_change(
    db: Database,
) -> None:
    insert(
        db.path,
        [
            (NOW - 10 * DAY, "local:a", "api:ada", 100, 10),
            (NOW - 10 * DAY + 60, "local:a", "api:ada", 50, 5),
            (NOW - 3 * DAY, "local:a", "api:bo", 7, 3),
            (NOW - 60, "local:b", "admin", 1, 1),
        ],
    )
    before = await usage.summary(db, since=NOW - 30 * DAY)
    conn = connect_sync(db.path)
    try:
        result = usage.rollup_and_expire(conn, days=5, now=NOW)
        again = usage.rollup_and_expire(conn, days=5, now=NOW)  # harmless twice
        raw = conn.execute("SELECT user_id FROM usage ORDER BY at").fetchall()
        daily = conn.execute(
            "SELECT day, user_id, requests, prompt_tokens FROM usage_daily ORDER BY day"
        ).fetchall()
    finally:
        conn.close()
    assert result["deleted"] == 2 and again["deleted"] == 0
    assert [r[0] for r in raw] == ["api:bo", "admin"]  # today's and within 5 days stay raw
    assert [tuple(r) for r in daily] == [
        ("2026-11-24", "api:ada", 2, 150),
        ("2026-12-01", "api:bo", 1, 7),
    ]
    after = await usage.summary(db, since=NOW - 30 * DAY)
    assert after["total"] == before["total"]
    assert after["users"] == before["users"] and after["days"] == before["days"]


async def test_user_totals_and_hourly_tokens(db: Database) -> None:
    insert(
        db.path,
        [
            (NOW - 2 * 3600, "local:a", "api:ada", 10, 1),
            (NOW - 2 * 3600 + 5, "local:a", "api:ada", 20, 2),
            (NOW - 60, "local:a", "api:ada", 5, 5),
            (NOW - 60, "local:a", "api:bo", 100, 100),
        ],
    )
    assert await usage.user_totals(db, "api:ada", NOW - 3 * 3600) == (35, 8)
    hours = await usage.hourly_tokens(db, NOW - 3 * 3600)
    assert [h["prompt"] + h["completion"] for h in hours] == [33, 210]


@pytest.mark.parametrize("text", ["soon", "7y", "-1d", "2026-13-01", "1e9"])
def test_a_bad_since_names_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="7d, 24h"):
        usage.parse_since(text, now=NOW)


def test_since_forms() -> None:
    assert usage.parse_since("7d", now=NOW) == NOW - 7 * DAY
    assert usage.parse_since("24h", now=NOW) == NOW - DAY
    assert usage.parse_since("2026-12-01", now=NOW) == usage.day_start("2026-12-01")
    assert usage.parse_since(None, now=NOW) == NOW - 30 * DAY
    assert usage.parse_since("1700000000", now=NOW) == 1700000000.0


async def test_a_summary_call_is_recorded_as_kind_summary(db: Database) -> None:
    from core.llm import LLMClient
    from tests.fake_llm import FakeLLM

    with FakeLLM() as fake:
        fake.reply = "a short summary"
        llm = LLMClient(base_url=fake.url, model="m1", max_retries=0)
        recorder = usage.UsageRecorder()
        try:
            summarize = usage.metered_summarize(llm, recorder, "local:a", "api:ada")
            assert await summarize("condense these notes") == "a short summary"
            fake.send_usage = False
            await summarize("again")
        finally:
            await llm.aclose()
        await recorder.flush(db)
        prompt, completion = fake.usage_of(fake.requests[0]["messages"], "a short summary")
    rows = await db.fetchall("SELECT * FROM usage ORDER BY id")
    assert [(r["kind"], r["user_id"], r["model"], r["outcome"]) for r in rows] == [
        ("summary", "api:ada", "m1", "ok"),
        ("summary", "api:ada", "m1", "ok"),
    ]
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"], rows[0]["estimated"]) == (
        prompt,
        completion,
        0,
    )
    assert rows[1]["estimated"] == 1 and rows[1]["completion_tokens"] > 0
