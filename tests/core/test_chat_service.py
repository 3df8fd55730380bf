"""ChatService: one turn at a time per chat, a global LLM limit, commands, admission."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.admission import AdjustableLimiter, Admission
from core.api import LocalReply
from core.app import build_runtime
from core.channel import IncomingMessage, TurnResult
from core.chat import (
    NOTHING_TO_CANCEL,
    NOTHING_TO_RETRY,
    RETRY_NOT_SHOWN,
    STOPPED,
    ChatService,
    parse_command,
    retry_reply,
)
from core.database import Database
from core.errors import Busy, Draining
from core.llm import LLMClient
from tests.conftest import make_settings
from tests.fake_llm import FakeLLM


@pytest.fixture
async def service(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[ChatService]:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, llm_concurrency=2)
    db = Database(settings.db_path)
    await db.open()
    llm = LLMClient(base_url=fake_llm.url, model="fake", timeout_s=5)
    runtime = build_runtime(settings, db, llm)
    yield runtime.chat
    await runtime.chat.drain_background()
    await llm.aclose()
    await db.close()


def msg(chat: str, text: str) -> IncomingMessage:
    return IncomingMessage(chat_id=chat, text=text)


async def test_second_message_in_a_chat_waits_its_turn(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    fake_llm.token_delay_s = 0.05
    first = asyncio.ensure_future(service.handle(msg("local:q", "first"), LocalReply()))
    await asyncio.sleep(0.02)
    second = asyncio.ensure_future(service.handle(msg("local:q", "second"), LocalReply()))
    await asyncio.sleep(0.02)
    assert service.pending("local:q") == 2
    results = await asyncio.gather(first, second)
    assert [r.reply for r in results] == ["echo: first", "echo: second"]
    history = await service.memory.history("local:q", limit=10)
    assert [t.content for t in reversed(history)] == [
        "first",
        "echo: first",
        "second",
        "echo: second",
    ]


async def test_global_llm_limit_holds_across_chats(service: ChatService, fake_llm: FakeLLM) -> None:
    fake_llm.token_delay_s = 0.05
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, service.limiter.active)
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(
        *(service.handle(msg(f"local:c{i}", "hi"), LocalReply()) for i in range(6))
    )
    watcher.cancel()
    assert peak == 2
    assert service.stats.turns == 6


async def test_queue_limit_refuses_politely(service: ChatService, fake_llm: FakeLLM) -> None:
    service.queue_limit = 1
    fake_llm.token_delay_s = 0.05
    running = asyncio.ensure_future(service.handle(msg("local:full", "one"), LocalReply()))
    await asyncio.sleep(0.02)
    with pytest.raises(Busy, match="too many messages waiting"):
        await service.handle(msg("local:full", "two"), LocalReply())
    await running


async def test_draining_and_throttling_refuse_new_turns_but_not_commands(
    service: ChatService,
) -> None:
    service.admission.throttle(retry_after=7, reason="cpu")
    with pytest.raises(Busy) as busy:
        await service.handle(msg("local:t", "hello"), LocalReply())
    assert busy.value.retry_after == 7
    service.admission.unthrottle()
    service.admission.start_draining(reason="forced")
    with pytest.raises(Draining):
        await service.handle(msg("local:t", "hello"), LocalReply())
    status = await service.handle(msg("local:t", "/help"), LocalReply())
    assert status.command == "help"


async def test_commands(service: ChatService) -> None:
    await service.handle(msg("local:cmd", "remember me"), LocalReply())
    reply = LocalReply()
    result = await service.handle(msg("local:cmd", "/reset"), reply)
    assert result.command == "reset"
    assert "forgotten" in reply.text
    assert (await service.memory.window("local:cmd")).turns == []
    assert "/reset" in (await service.handle(msg("local:cmd", "/help"), LocalReply())).reply
    assert (
        "Nothing folded" in (await service.handle(msg("local:cmd", "/summary"), LocalReply())).reply
    )
    assert (await service.handle(msg("local:cmd", "/status"), LocalReply())).reply
    unknown = await service.handle(msg("local:cmd", "/frobnicate"), LocalReply())
    assert "Unknown command /frobnicate" in unknown.reply
    assert len(await service.memory.history("local:cmd")) == 2  # commands are not stored


def test_parse_command() -> None:
    assert parse_command("/reset@VigilBot now") == ("reset", "now")
    assert parse_command("/HELP") == ("help", "")
    assert parse_command("hello /reset") == (None, "hello /reset")
    assert parse_command("/") == (None, "/")
    assert parse_command("/path/to/file is broken") == (None, "/path/to/file is broken")


async def test_adjustable_limiter_lowers_and_raises() -> None:
    limiter = AdjustableLimiter(3)
    await limiter.set_limit(1)
    order: list[str] = []

    async def job(name: str) -> None:
        async with limiter.slot():
            order.append(f"+{name}")
            await asyncio.sleep(0.01)
            order.append(f"-{name}")

    await asyncio.gather(job("a"), job("b"))
    assert order in (["+a", "-a", "+b", "-b"], ["+b", "-b", "+a", "-a"])


async def test_admission_wait_idle() -> None:
    admission = Admission()
    assert await admission.wait_idle(0.01) is True
    with admission.turn():
        assert await admission.wait_idle(0.01) is False
    assert await admission.wait_idle(0.01) is True


class FailingChannel(LocalReply):
    """A channel whose final delivery fails, like a Telegram connection lost mid-reply."""

    def __init__(self) -> None:
        super().__init__()
        self.sends = 0

    async def send(self, chat_id: str, text: str) -> str:
        from core.errors import ChannelError

        raise ChannelError("telegram connection lost")


async def test_queued_turns_count_as_in_flight(service: ChatService, fake_llm: FakeLLM) -> None:
    # Found in review: between two queued turns in_flight dropped to 0 and a
    # graceful restart exited, losing the queued question's answer.
    fake_llm.token_delay_s = 0.05
    first = asyncio.ensure_future(service.handle(msg("local:d", "first"), LocalReply()))
    await asyncio.sleep(0.02)
    second = asyncio.ensure_future(service.handle(msg("local:d", "second"), LocalReply()))
    await asyncio.sleep(0.02)
    assert service.admission.in_flight == 2
    await first
    assert service.admission.in_flight == 1  # the queued turn is still owed an answer
    assert await service.admission.wait_idle(5)
    assert (await second).reply == "echo: second"


async def test_reset_waits_for_the_running_turn(service: ChatService, fake_llm: FakeLLM) -> None:
    # Found in review: an API reset during a turn let its answer land in the new context.
    fake_llm.token_delay_s = 0.05
    turn = asyncio.ensure_future(service.handle(msg("local:r", "secret plan alpha"), LocalReply()))
    await asyncio.sleep(0.02)
    await service.reset("local:r")
    assert turn.done()
    assert (await service.memory.window("local:r")).turns == []


async def test_a_reply_is_stored_even_when_delivery_fails(service: ChatService) -> None:
    result = await service.handle(msg("tg:3", "important question"), FailingChannel())
    assert result.reply == "echo: important question"
    history = await service.memory.history("tg:3")
    assert [t.content for t in history] == ["echo: important question", "important question"]


async def test_surrogate_halves_from_the_model_are_repaired(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = "smile \ud83d\ude00 and a lone \ud800 half"
    fake_llm.chunk_chars = 7  # splits the emoji's two halves across chunks
    result = await service.handle(msg("local:u", "hi"), LocalReply())
    assert result.reply == "smile 😀 and a lone \ufffd half"
    assert (await service.memory.last_turn("local:u", "assistant")).content == result.reply


async def test_retry_keeps_the_old_answer_when_the_model_is_down(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    await service.handle(msg("local:rt", "what is 2+2"), LocalReply())
    fake_llm.fail_times = -1
    failed = await service.retry(msg("local:rt", "/retry"), LocalReply())
    assert failed is not None and failed.error_code == "llm_unavailable"
    history = [t.content for t in await service.memory.history("local:rt")]
    assert history == ["echo: what is 2+2", "what is 2+2"]
    fake_llm.fail_times = 0
    fake_llm.reply = "four"
    redone = await service.retry(msg("local:rt", "/retry"), LocalReply())
    assert redone is not None and redone.reply == "four"
    assert [t.content for t in await service.memory.history("local:rt")] == ["four", "what is 2+2"]
    sent = [m["content"] for m in fake_llm.requests[-1]["messages"][1:]]
    assert sent == ["what is 2+2"]  # the answer being replaced is not in the prompt


async def test_summary_refinement_is_batched(tmp_path: Path, fake_llm: FakeLLM) -> None:
    # Found in review: every overflowing turn asked the model for a summary too.
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, context_max_messages=4)
    db = Database(settings.db_path)
    await db.open()
    llm = LLMClient(base_url=fake_llm.url, model="fake", timeout_s=5)
    runtime = build_runtime(settings, db, llm)
    try:
        for i in range(30):
            await runtime.chat.handle(msg("local:b", f"turn {i}"), LocalReply())
        await runtime.chat.drain_background()
        summaries = [
            r for r in fake_llm.requests if r["messages"][0]["content"].startswith("Condense")
        ]
        # ~56 folded turns, one refinement per 20 (one per overflowing turn, ~28, before)
        assert 1 <= len(summaries) <= 4
    finally:
        await llm.aclose()
        await db.close()


async def test_big_context_limits_survive_a_window_rebuild(tmp_path: Path) -> None:
    # Found in review: with VIGIL_CONTEXT_MAX_MESSAGES above 200 a rebuilt window
    # silently lost its oldest turns (neither in the prompt nor in the summary).
    settings = make_settings(
        tmp_path, context_max_messages=400, context_max_tokens=100_000, llm_base_url="http://x/v1"
    )
    db = Database(settings.db_path)
    await db.open()
    llm = LLMClient(base_url=settings.llm_base_url, model="fake")
    runtime = build_runtime(settings, db, llm)
    try:
        for i in range(300):
            await runtime.memory.append("local:big", "user" if i % 2 == 0 else "assistant", f"t{i}")
        runtime.memory.evict("local:big")  # as after a restart
        prompt = await runtime.context.build("local:big")
        assert len(prompt.turns) == 300
        assert prompt.turns[0].content == "t0"
    finally:
        await llm.aclose()
        await db.close()


async def test_cancel_and_retry_work_on_the_local_channel(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    # No channel's starter ran (build_runtime only): the commands are ChatService's own.
    said = await service.handle(msg("local:cr", "/cancel"), LocalReply())
    assert said.command == "cancel" and said.reply == NOTHING_TO_CANCEL
    said = await service.handle(msg("local:cr", "/retry"), LocalReply())
    assert said.command == "retry" and said.reply == NOTHING_TO_RETRY

    await service.handle(msg("local:cr", "tell me a joke"), LocalReply())
    fake_llm.reply = "a better joke"
    redone = await service.handle(msg("local:cr", "/retry"), LocalReply())
    assert redone.command == "retry" and redone.reply == "a better joke"
    history = await service.memory.history("local:cr", limit=10)
    assert [t.content for t in reversed(history)] == ["tell me a joke", "a better joke"]

    fake_llm.reply = " ".join(f"word{i}" for i in range(400))
    fake_llm.token_delay_s = 0.01
    events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    streaming = LocalReply(events)
    turn = asyncio.ensure_future(service.handle(msg("local:cr", "a long story"), streaming))
    while (await events.get())[0] != "delta":
        pass  # the reply is being written
    stop = await service.handle(msg("local:cr", "/cancel"), LocalReply())
    assert stop.command == "cancel" and stop.reply == "" and not stop.sent_ids
    stopped = await turn
    assert stopped.cancelled and streaming.text.endswith(STOPPED)
    assert "word399" not in streaming.text


SHOWN = "the retry's own TurnResult"


@pytest.mark.parametrize(
    ("result", "said"),
    [
        (None, NOTHING_TO_RETRY),
        (TurnResult("tg:1", "new", 1, 2, sent_ids=("9",)), SHOWN),
        (
            TurnResult("tg:1", "⚠️ down", 1, None, error_code="llm_unavailable", sent_ids=("9",)),
            SHOWN,
        ),
        (TurnResult("tg:1", "new", 1, 2, sent_ids=()), RETRY_NOT_SHOWN),  # delivery failed
        (TurnResult("tg:1", "⏹ Stopped.", 1, None, cancelled=True), SHOWN),
    ],
)
def test_the_retry_command_answers_with_what_retry_returned(
    result: TurnResult | None, said: str
) -> None:
    # Shown already: the result itself comes back (ChatService sends nothing more
    # for a TurnResult; the local API gets the new reply and its error code).
    outcome = retry_reply(result)
    assert outcome is result if said is SHOWN else outcome == said


async def test_a_background_turn_is_refused_before_it_starts(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    service.queue_limit = 1
    fake_llm.token_delay_s = 0.05
    running = service.handle_in_background(msg("local:bg", "one"), LocalReply())
    await asyncio.sleep(0.02)
    with pytest.raises(Busy, match="too many messages waiting"):
        service.handle_in_background(msg("local:bg", "two"), LocalReply())  # no task made
    assert (await running).reply == "echo: one"
    assert service.stats.rejected == 1
    service.admission.start_draining(reason="forced")
    with pytest.raises(Draining):
        service.handle_in_background(msg("local:bg", "three"), LocalReply())
