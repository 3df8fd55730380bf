"""Task bodies against real services: the fake model, a live server."""

from __future__ import annotations

import time

from core.config import Settings
from core.database import connect_sync
from tasks import jobs
from tests.fake_llm import FakeLLM
from tests.tasks.conftest import fill, rows


def _overflow(settings: Settings, chat_id: str) -> None:
    conn = connect_sync(settings.db_path)
    conn.execute(
        "UPDATE chats SET summary = '- user: apples\n- assistant: pears', summary_upto_id = 10,"
        " updated_at = ? WHERE id = ?",
        (time.time(), chat_id),
    )
    conn.close()


def test_refine_summaries_uses_the_model(settings: Settings, fake_llm: FakeLLM) -> None:
    fake_llm.reply = "They talked about fruit."
    fill(settings.db_path, 60)
    _overflow(settings, "local:c1")
    result = jobs.refine_summaries(settings)
    assert result == {"refined": 1, "failed": 0, "candidates": 1}
    summary = rows(settings.db_path, "SELECT summary FROM chats WHERE id = 'local:c1'")[0][0]
    assert summary == "They talked about fruit."
    assert jobs.refine_summaries(settings) == {"refined": 0, "candidates": 0}  # no longer '- '


def test_refine_summaries_skips_when_the_model_is_down(tsettings: Settings) -> None:
    fill(tsettings.db_path, 60)
    _overflow(tsettings, "local:c2")
    result = jobs.refine_summaries(tsettings)
    assert result["candidates"] == 1 and result["skipped"].startswith("model unreachable")


def test_message_retention_is_off_by_default(filled: Settings) -> None:
    assert "skipped" in jobs.message_retention(filled)
    assert rows(filled.db_path, "SELECT count(*) FROM messages")[0][0] == 300
