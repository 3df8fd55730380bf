"""The Telegram gateway inside the real app: real uvicorn, real SQLite, FakeLLM over
HTTP, and FakeTelegram standing in for Telegram's servers at the client boundary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import errors, types

from core.chat import NOTHING_TO_CANCEL, NOTHING_TO_RETRY
from core.config import Settings
from core.telegram.bot import MEDIA_REPLY
from core.telegram.session import SessionBusy, SessionLock
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.fake_telegram import FakeTelegram, FakeUser

ADA = FakeUser(id=42, username="ada", first_name="Ada")
BOB = FakeUser(id=43, username="bob", first_name="Bob")
EVE = FakeUser(id=66, username="eve", first_name="Eve")
GROUP = -100123


def tg_settings(tmp_path: Path, fake_llm: FakeLLM, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "llm_base_url": fake_llm.url,
        "telegram_admin_id": 42,
        "telegram_allowed_users": ["bob"],
        "telegram_paste_debounce_s": 0.2,
        "telegram_probe_interval_s": 0.05,
        "telegram_edit_interval_private_s": 0.05,
        "telegram_edit_interval_group_s": 0.05,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


async def settle(runtime: Any) -> None:
    """Wait until every Telegram turn (and held-back paste) is done."""
    bot = runtime.telegram_bot
    for _ in range(2000):
        if not bot._tasks and not bot.paste._pending:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("Telegram turns did not finish")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


class Tg:
    """A live server with FakeTelegram: deliver updates, then settle."""

    def __init__(self, server: LiveServer, fake: FakeTelegram) -> None:
        self.server, self.fake = server, fake
        wait_until(lambda: server.runtime.telegram.state in ("connected", "unauthorized"))

    def say(self, text: str, **kwargs: Any) -> None:
        kwargs.setdefault("sender", ADA)
        self.server.call(lambda rt: self.fake.deliver(text, **kwargs))
        self.server.call(settle)

    def status(self) -> dict[str, Any]:
        return dict(self.server.client.get("/telegram/status").json())


@pytest.fixture
def tg(tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any) -> Tg:
    fake = FakeTelegram()
    server = live_server_factory(tg_settings(tmp_path, fake_llm), telegram=fake)
    return Tg(server, fake)


def test_private_chat_gets_a_streamed_answer_and_status_tells_the_truth(tg: Tg) -> None:
    tg.say("hello there", chat_id=42)
    assert tg.fake.texts(42) == ["echo: hello there"]
    assert tg.fake.typing == [42]
    assert tg.fake.not_modified_raised == 0
    status = tg.status()
    assert status["state"] == "connected"
    assert status["account"] == {"id": 777, "username": "VigilBot", "is_bot": True}
    assert status["initialized"] is True
    assert status["last_update_at"] is not None
    assert status["last_ok_call_at"] is not None and status["last_error"] is None
    assert status["server"]["server"] == "production"
    assert tg.server.client.get("/health").json()["telegram"] == "connected"
    history = tg.server.call(lambda rt: rt.memory.history("tg:42", limit=10))
    assert [t.role for t in history] == ["assistant", "user"]


def test_group_answers_only_when_addressed(tg: Tg, fake_llm: FakeLLM) -> None:
    tg.say("just chatting among ourselves", chat_id=GROUP, group=True)
    tg.say("/help@OtherBot", chat_id=GROUP, group=True)
    assert tg.fake.texts(GROUP) == []
    assert fake_llm.requests == []
    tg.say("@VigilBot what is two plus two?", chat_id=GROUP, group=True)
    assert tg.fake.texts(GROUP) == ["echo: Ada: what is two plus two?"]
    answer_id = tg.fake.sent[GROUP][0].id
    tg.say("and three?", chat_id=GROUP, group=True, sender=BOB, reply_to=answer_id)
    tg.say("/help", chat_id=GROUP, group=True)
    texts = tg.fake.texts(GROUP)
    assert texts[1] == "echo: Bob: and three?"
    assert texts[2].startswith("I'm Vigil")
    # each group keeps its own context, with the speakers' names
    prompt = fake_llm.requests[-1]["messages"]
    assert prompt[-1]["content"] == "Bob: and three?"
    assert prompt[1]["content"] == "Ada: what is two plus two?"


def test_strangers_get_one_polite_refusal_and_no_model_call(tg: Tg, fake_llm: FakeLLM) -> None:
    tg.say("hi", chat_id=66, sender=EVE)
    tg.say("hello??", chat_id=66, sender=EVE)
    assert len(tg.fake.texts(66)) == 1
    assert "allow-list" in tg.fake.texts(66)[0] and "66" in tg.fake.texts(66)[0]
    assert fake_llm.requests == []
    tg.say("hi from bob", chat_id=43, sender=BOB)  # allowed by username
    assert tg.fake.texts(43) == ["echo: hi from bob"]


def test_the_memory_of_refused_strangers_is_bounded(tg: Tg, fake_llm: FakeLLM) -> None:
    bot = tg.server.runtime.telegram_bot
    bot.refusals.limit = 2  # the default is 10 000 pairs
    for user_id in (60, 61, 62, 62):
        tg.say("hi", chat_id=user_id, sender=FakeUser(id=user_id, username=f"u{user_id}"))
    assert bot.refused_count == 2
    assert [len(tg.fake.texts(u)) for u in (60, 61, 62)] == [1, 1, 1]
    assert tg.status()["chats"]["refused_users"] == 2
    assert fake_llm.requests == []


def test_a_split_paste_is_joined_and_answered_once(tg: Tg, fake_llm: FakeLLM) -> None:
    first, second = "a" * 3500, "the end"

    async def paste(rt: Any) -> None:
        await tg.fake.deliver(first, chat_id=42, sender=ADA)
        await tg.fake.deliver(second, chat_id=42, sender=ADA)

    tg.server.call(paste)
    tg.server.call(settle)
    assert len(fake_llm.requests) == 1
    assert fake_llm.requests[0]["messages"][-1]["content"] == first + "\n" + second
    assert tg.status()["chats"]["joined_pastes"] == 1


def test_a_long_message_alone_is_answered_after_the_debounce(tg: Tg, fake_llm: FakeLLM) -> None:
    tg.say("b" * 3500, chat_id=42)
    assert len(fake_llm.requests) == 1
    assert len(tg.fake.texts(42)) >= 1


def test_a_paste_over_the_limit_gets_a_polite_reply_and_no_model_call(
    tg: Tg, fake_llm: FakeLLM
) -> None:
    async def paste(rt: Any) -> None:
        for i in range(10):  # ten 4000-char pieces of one 40009-char paste
            await tg.fake.deliver(str(i) * 4000, chat_id=42, sender=ADA)

    tg.server.call(paste)
    tg.server.call(settle)
    assert tg.fake.texts(42) == ["That message is 40009 characters; the limit is 16000."]
    assert fake_llm.requests == []
    tg.say("and a short one", chat_id=42)
    assert tg.fake.texts(42)[-1] == "echo: and a short one"


def test_a_message_over_max_message_chars_is_refused_politely(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    settings = tg_settings(tmp_path, fake_llm, max_message_chars=100)
    tg = Tg(live_server_factory(settings, telegram=fake), fake)
    tg.say("x" * 150, chat_id=42)
    assert tg.fake.texts(42) == ["That message is 150 characters; the limit is 100."]
    assert fake_llm.requests == []
    tg.say("y" * 100, chat_id=42)
    assert tg.fake.texts(42)[-1] == "echo: " + "y" * 100


def test_media_get_a_text_only_reply(tg: Tg, fake_llm: FakeLLM) -> None:
    tg.say("", chat_id=42, media=types.MessageMediaPhoto())
    assert tg.fake.texts(42) == [MEDIA_REPLY]
    assert fake_llm.requests == []
    preview = types.MessageMediaWebPage(webpage=types.WebPageEmpty(id=1))
    tg.say("see https://example.org", chat_id=42, media=preview)  # a link preview is text
    assert tg.fake.texts(42)[-1] == "echo: see https://example.org"


def test_busy_and_draining_get_polite_replies(tg: Tg, fake_llm: FakeLLM) -> None:
    tg.server.call(_throttle)
    tg.say("are you there?", chat_id=42)
    assert tg.fake.texts(42) == ["⏳ I'm busy right now; please try again in 7 s."]
    tg.server.call(_drain)
    tg.say("and now?", chat_id=42)
    assert tg.fake.texts(42)[-1].startswith("🔄 I'm restarting")
    assert fake_llm.requests == []


async def _throttle(rt: Any) -> None:
    rt.admission.throttle(retry_after=7, reason="cpu")


async def _drain(rt: Any) -> None:
    rt.admission.unthrottle()
    rt.admission.start_draining(reason="test")


def test_cancel_stops_the_reply_being_streamed(tg: Tg, fake_llm: FakeLLM) -> None:
    fake_llm.reply = " ".join(f"word{i}" for i in range(400))
    fake_llm.token_delay_s = 0.01
    tg.server.call(lambda rt: tg.fake.deliver("tell me a long story", chat_id=42, sender=ADA))
    wait_until(lambda: bool(tg.fake.sent[42]))
    tg.say("/cancel", chat_id=42)
    texts = tg.fake.texts(42)
    assert len(texts) == 1  # /cancel itself adds no message; the reply says it stopped
    assert texts[0].endswith("⏹ Stopped.")
    assert "word399" not in texts[0]
    stored = tg.server.call(lambda rt: rt.memory.last_turn("tg:42", "assistant"))
    assert stored is not None and "⏹" not in stored.content
    tg.say("/cancel", chat_id=42)
    assert tg.fake.texts(42)[-1] == NOTHING_TO_CANCEL == "Nothing is being written right now."


def test_retry_writes_the_last_answer_again(tg: Tg, fake_llm: FakeLLM) -> None:
    answers = iter(["first answer", "second answer"])
    fake_llm.reply = lambda messages: next(answers)
    tg.say("question", chat_id=42)
    tg.say("/retry", chat_id=42)
    assert tg.fake.texts(42) == ["first answer", "second answer"]
    history = tg.server.call(lambda rt: rt.memory.history("tg:42", limit=10))
    assert [(t.role, t.content) for t in history] == [
        ("assistant", "second answer"),
        ("user", "question"),
    ]
    assert fake_llm.requests[-1]["messages"][-1]["content"] == "question"


def test_retry_with_nothing_asked_yet_says_so(tg: Tg, fake_llm: FakeLLM) -> None:
    tg.say("/retry", chat_id=42)
    assert tg.fake.texts(42) == [NOTHING_TO_RETRY] == ["Nothing to retry yet."]
    assert fake_llm.requests == []


def test_a_retry_the_model_fails_shows_its_error_and_nothing_more(
    tg: Tg, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = lambda messages: "first answer"
    tg.say("question", chat_id=42)
    fake_llm.fail_times = -1
    tg.say("/retry", chat_id=42)
    texts = tg.fake.texts(42)
    assert len(texts) == 2 and texts[0] == "first answer"
    assert texts[1].startswith("⚠️")  # the streamer showed the model's error; no extra message


def test_flood_wait_mid_stream_is_waited_out_and_the_final_text_lands(
    tg: Tg, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = " ".join(f"w{i}" for i in range(120))
    fake_llm.token_delay_s = 0.005
    tg.fake.fail("edit_message", errors.FloodWaitError(request=None, capture=1))
    tg.say("go", chat_id=42)
    assert tg.fake.texts(42) == [fake_llm.reply]
    flood = tg.status()["flood_waits"]
    assert flood["count"] == 1 and flood["seconds"] == 1.0


def test_markdown_becomes_entities_with_a_plain_fallback(tg: Tg, fake_llm: FakeLLM) -> None:
    fake_llm.reply = "**Bold** and `code`"
    tg.say("format please", chat_id=42)
    sent = tg.fake.sent[42][0]
    assert sent.message == "Bold and code"
    assert [type(e).__name__ for e in sent.entities] == ["MessageEntityBold", "MessageEntityCode"]
    tg.fake.fail("send_message", errors.EntityBoundsInvalidError(request=None))
    tg.say("again", chat_id=42)
    fallback = tg.fake.sent[42][-1]
    assert fallback.message == "**Bold** and `code`" and fallback.entities == []


def test_unconfigured_server_reports_not_configured(live_server: LiveServer) -> None:
    assert live_server.client.get("/telegram/status").json()["state"] == "not_configured"
    assert live_server.client.get("/health").json()["telegram"] == "not_configured"
    reply = live_server.chat("local", "/cancel").json()["reply"]
    assert reply == "Nothing is being written right now."  # the commands work everywhere


def test_a_user_session_that_is_not_logged_in_is_unauthorized(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram(authorized=False)
    server = live_server_factory(tg_settings(tmp_path, fake_llm), telegram=fake)
    tg = Tg(server, fake)
    assert tg.status()["state"] == "unauthorized"
    assert "telegram_login.sh" in tg.status()["last_error"]
    health = server.client.get("/health").json()
    assert health["telegram"] == "unauthorized" and health["status"] == "degraded"


def test_a_bot_signs_in_with_its_token(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram(authorized=False, bot_token="123:abc")
    settings = tg_settings(tmp_path, fake_llm, telegram_bot_token="123:abc")
    tg = Tg(live_server_factory(settings, telegram=fake), fake)
    assert tg.status()["state"] == "connected"
    assert ("sign_in", {"phone": None, "bot": True}) in fake.calls


def test_a_dead_connection_is_reported_and_reopened(tg: Tg) -> None:
    tg.fake.connect_error = ConnectionError("network is down")
    tg.fake.connected = False
    wait_until(lambda: tg.status()["state"] == "disconnected")
    assert tg.server.client.get("/health").json()["status"] == "degraded"
    assert tg.server.client.get("/health/live").status_code == 200  # never a restart
    tg.fake.connect_error = None
    wait_until(lambda: tg.status()["state"] == "connected")
    assert tg.status()["reconnects"] >= 1


def test_the_server_holds_the_session_lock(tg: Tg) -> None:
    with pytest.raises(SessionBusy, match="in use by the Vigil server"):
        SessionLock(tg.server.settings.session_path).acquire("a test")


def test_a_bad_bot_token_is_unauthorized_and_says_so(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram(authorized=False, bot_token="123:right")
    settings = tg_settings(tmp_path, fake_llm, telegram_bot_token="123:wrong")
    tg = Tg(live_server_factory(settings, telegram=fake), fake)
    status = tg.status()
    assert status["state"] == "unauthorized"
    assert status["last_error"] == "bot sign-in: Telegram error AccessTokenInvalidError"
    assert "123:wrong" not in tg.server.client.get("/telegram/status").text


def test_a_paste_in_a_group_needs_the_mention_only_in_its_first_piece(
    tg: Tg, fake_llm: FakeLLM
) -> None:
    first = "@VigilBot " + "c" * 3500

    async def paste(rt: Any) -> None:
        await tg.fake.deliver(first, chat_id=GROUP, group=True, sender=ADA)
        await tg.fake.deliver("d" * 3500, chat_id=GROUP, group=True, sender=ADA)
        await tg.fake.deliver("end of it", chat_id=GROUP, group=True, sender=ADA)
        await tg.fake.deliver("unrelated chatter", chat_id=GROUP, group=True, sender=BOB)

    tg.server.call(paste)
    tg.server.call(settle)
    assert len(fake_llm.requests) == 1
    asked = fake_llm.requests[0]["messages"][-1]["content"]
    assert asked == "Ada: " + "c" * 3500 + "\n" + "d" * 3500 + "\nend of it"


def test_a_client_factory_can_be_injected_and_gets_the_server_profile(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    seen: list[Any] = []

    def factory(settings: Settings, profile: Any) -> FakeTelegram:
        seen.append(profile.label)
        return fake

    settings = tg_settings(tmp_path, fake_llm, telegram_server="3@10.1.2.3:8443")
    tg = Tg(live_server_factory(settings, telegram=factory), fake)
    assert seen == ["3@10.1.2.3:8443"]
    assert fake.dc_at_connect[0] == (3, "10.1.2.3", 8443)
    assert tg.status()["server"]["server"] == "3@10.1.2.3:8443"
