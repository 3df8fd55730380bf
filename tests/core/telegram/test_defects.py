"""End-to-end defects of the Telegram channel, one test each: a first sign-in that fails,
Telegram history through the chat API, refusals across a restart, and the cosmetic list."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from telethon.sessions import SQLiteSession

from core.api import CHAT_ID_RE, STORED_CHAT_ID_RE
from core.app import create_app
from core.telegram.bot import DRAINING_REPLY, STOPPING_REPLY
from core.telegram.session import check_session_server, marker_path, server_profile
from tests.conftest import LiveServer, make_settings
from tests.core.telegram.test_app import ADA, BOB, EVE, settle, tg_settings, wait_until
from tests.fake_llm import FakeLLM
from tests.fake_telegram import FakeTelegram

CUSTOM = "2@127.0.0.1:4430"


async def run_lifespan(app: Any, until: Any) -> None:
    async with app.router.lifespan_context(app):
        gateway = app.state.vigil.telegram
        async with asyncio.timeout(10):
            while not until(gateway):
                await asyncio.sleep(0.01)


def test_a_failed_first_sign_in_leaves_a_session_the_next_start_accepts(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        telegram_api_id=1,
        telegram_api_hash="h",
        telegram_server=CUSTOM,
        telegram_bot_token="123:wrong",
    )
    fake = FakeTelegram(authorized=False, bot_token="123:right")
    app = create_app(settings, telegram=fake)
    asyncio.run(run_lifespan(app, lambda g: g.state == "unauthorized"))
    assert app.state.vigil.telegram.last_error.startswith("bot sign-in")
    settings.session_path.write_bytes(b"SQLite format 3\0")  # what Telethon left behind
    # The next start must not judge the session by a marker it never got.
    check_session_server(settings.session_path, server_profile(settings))
    again = create_app(settings, telegram=FakeTelegram(authorized=False, bot_token="123:wrong"))
    asyncio.run(run_lifespan(again, lambda g: g.state == "connected"))


def test_a_session_left_without_its_marker_is_judged_by_its_stored_address(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, telegram_server=CUSTOM)
    settings.data_dir.mkdir(parents=True)
    session = SQLiteSession(str(settings.session_path))  # Telethon's own session file
    session.set_dc(2, "127.0.0.1", 4430)
    session.save()
    session.close()
    assert not marker_path(settings.session_path).exists()
    check_session_server(settings.session_path, server_profile(settings))  # no refusal
    assert marker_path(settings.session_path).exists()
    other = make_settings(tmp_path, telegram_server="2@127.0.0.1:9999")
    with pytest.raises(Exception, match="created for Telegram server"):
        check_session_server(settings.session_path, server_profile(other))


def test_every_chat_the_api_lists_is_readable_and_resettable(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    server: LiveServer = live_server_factory(tg_settings(tmp_path, fake_llm), telegram=fake)
    wait_until(lambda: server.runtime.telegram.state == "connected")
    server.call(lambda rt: fake.deliver("hello from Telegram", chat_id=777006, sender=ADA))
    server.call(settle)
    assert server.chat("notes", "hello locally").status_code == 200
    listed = [c["id"] for c in server.client.get("/api/chats").json()["chats"]]
    assert sorted(listed) == ["local:notes", "tg:777006"]
    for chat_id in listed:
        page = server.client.get(f"/api/chats/{chat_id}/messages")
        assert page.status_code == 200, page.text
        assert page.json()["chat_id"] == chat_id and page.json()["message_count"] == 2
        reset = server.client.delete(f"/api/chats/{chat_id}/context")
        assert reset.status_code == 200 and reset.json()["history_kept"] == 2
    window = server.call(lambda rt: rt.memory.window("tg:777006"))
    assert window.turns == []  # the reset reached the Telegram chat's context
    for bad in ("tg:abc", "telegram:1", "local:", "x:y:z"):
        answer = server.client.get(f"/api/chats/{bad}/messages")
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_chat_id"
    assert server.client.get("/api/chats/tg:1/messages").status_code == 404


def test_a_stranger_is_refused_once_also_across_a_restart(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    settings = tg_settings(tmp_path, fake_llm)
    fake = FakeTelegram()
    for _ in range(2):
        server: LiveServer = live_server_factory(settings, telegram=fake.factory)
        wait_until(lambda: server.runtime.telegram.state == "connected")  # noqa: B023
        server.call(lambda rt: fake.deliver("hi", chat_id=66, sender=EVE))
        server.call(settle)
        server.stop()
    assert len(fake.texts(66)) == 1 and "allow-list" in fake.texts(66)[0]
    assert fake_llm.requests == []


def test_the_docs_name_chats_the_way_the_api_lists_them() -> None:
    root = Path(__file__).resolve().parents[3]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    named = [
        chat_id
        for path in docs
        for chat_id in re.findall(r"--chat[ =](\S+)|/api/chats/([^/\s]+)/", path.read_text())
    ]
    ids = [i for a, b in named if not (i := a or b).isupper() and "ID" not in i and "{" not in i]
    assert "tg:123456" in ids
    assert all(STORED_CHAT_ID_RE.match(i) or CHAT_ID_RE.match(i) for i in ids), ids


def test_group_answers_reply_to_the_question_private_ones_do_not(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    server: LiveServer = live_server_factory(tg_settings(tmp_path, fake_llm), telegram=fake)
    wait_until(lambda: server.runtime.telegram.state == "connected")
    group = -100123
    fake_llm.reply = "a long answer " * 400  # split into two messages
    question = server.call(
        lambda rt: fake.deliver("@VigilBot explain", chat_id=group, group=True, sender=ADA)
    )
    server.call(lambda rt: fake.deliver("and you?", chat_id=42, sender=ADA))
    server.call(settle)
    answers = fake.sent[group]
    assert len(answers) == 2
    assert [m.reply_to_msg_id for m in answers] == [question.id, question.id]
    assert [m.reply_to_msg_id for m in fake.sent[42]] == [None, None]


def test_a_stop_says_offline_a_restart_says_restarting_and_both_answer_later(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    settings = tg_settings(tmp_path, fake_llm)
    fake = FakeTelegram()
    server: LiveServer = live_server_factory(settings, telegram=fake.factory)
    wait_until(lambda: server.runtime.telegram.state == "connected")
    server.runtime.admission.start_draining(reason="signal")  # what scripts/stop.sh causes
    server.call(lambda rt: fake.deliver("are you there?", chat_id=42, sender=ADA))
    server.call(settle)
    server.runtime.admission.start_draining(reason="scheduled")  # a restart
    server.call(lambda rt: fake.deliver("and now?", chat_id=43, sender=BOB))
    server.call(settle)
    assert fake.texts(42) == [STOPPING_REPLY] and fake.texts(43) == [DRAINING_REPLY]
    assert "restarting" not in STOPPING_REPLY
    server.stop()
    again: LiveServer = live_server_factory(settings, telegram=fake.factory)
    wait_until(lambda: len(fake.texts(42)) == 2 and len(fake.texts(43)) == 2)
    again.call(settle)
    assert fake.texts(42)[1] == "echo: are you there?"
    assert fake.texts(43)[1] == "echo: and now?"


def test_the_docs_name_the_telethon_version_and_layer_a_custom_server_needs() -> None:
    from telethon import __version__ as telethon_version
    from telethon.tl.alltlobjects import LAYER

    root = Path(__file__).resolve().parents[3]
    docs = " ".join((root / "docs" / "telegram.md").read_text().split())
    assert f"Telethon {telethon_version}, which speaks MTProto API layer {LAYER}" in docs
    assert f"telethon=={telethon_version}" in (root / "requirements.txt").read_text()
