"""Per-user limits: token budgets, the rate limit, fair queueing and the idle restart.

Real SQLite and the fake model over HTTP; the budget clock and zone are injected.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.api import LocalReply
from core.budgets import Budgets, Periods, RateLimiter, parse_user
from core.channel import IncomingMessage, api_user
from core.chat import IDLE_RESET_NOTE, ChatService
from core.config import ConfigError, load_settings
from core.database import Database
from core.errors import BudgetExceeded, UserRateLimited
from tests.conftest import LiveServer, make_settings
from tests.core.conftest import RuntimeFactory
from tests.fake_llm import FakeLLM

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: dt.datetime) -> None:
        self.now = at.timestamp()


@pytest.fixture
async def service(
    tmp_path: Path, fake_llm: FakeLLM, runtime_factory: RuntimeFactory
) -> AsyncIterator[ChatService]:
    settings = make_settings(
        tmp_path, llm_base_url=fake_llm.url, llm_model="fake", llm_concurrency=1
    )
    runtime = await runtime_factory(settings)
    yield runtime.chat
    await runtime.chat.drain_background()


async def spend(db: Database, user: str, at: dt.datetime, tokens: int) -> None:
    await db.write(
        "INSERT INTO usage (at, chat_id, user_id, kind, model, prompt_tokens,"
        " completion_tokens, outcome) VALUES (?, 'local:x', ?, 'chat', 'fake', ?, ?, 'ok')",
        (at.timestamp(), user, tokens - tokens // 2, tokens // 2),
    )


def as_user(text: str, user: str | None = "alice", chat: str = "local:b") -> IncomingMessage:
    return IncomingMessage(chat_id=chat, text=text, user_id=api_user(user))


def budgets(service: ChatService, clock: Clock, **limits: int) -> Budgets:
    found = Budgets(service.memory.db, tz=BERLIN, clock=clock, **limits)
    found.pending = service.unwritten_usage
    service.usage.clock = clock  # the turns' own usage rows fall in the budget clock's day
    service.budgets = found
    return found


async def test_refused_exactly_at_the_daily_limit_and_the_model_is_not_called(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    clock = Clock(dt.datetime(2026, 12, 4, 15, 0, tzinfo=BERLIN))
    budget = budgets(service, clock, user_day=100)
    morning = dt.datetime(2026, 12, 4, 9, 0, tzinfo=BERLIN)
    await spend(service.memory.db, "api:below", morning, 99)
    await spend(service.memory.db, "api:alice", morning, 100)
    result = await service.handle(as_user("one below", "below"), LocalReply())
    assert result.reply == "echo: one below"
    calls = len(fake_llm.requests)
    with pytest.raises(BudgetExceeded) as refused:
        await service.handle(as_user("at the limit"), LocalReply())
    assert len(fake_llm.requests) == calls  # the model was not called
    error = refused.value.to_dict()
    assert error["code"] == "budget_exceeded"
    assert error["resets_at"] == "2026-12-05T00:00:00+01:00"
    assert "daily budget of 100 tokens" in error["message"]
    assert "2026-12-05 00:00" in error["message"]
    history = await service.memory.history("local:b", limit=10)
    assert "at the limit" not in [t.content for t in history]  # not stored either
    assert budget.refusals == 1
    left = await budget.remaining("api:alice")  # what /usage shows
    assert left["day"] == {
        "limit": 100,
        "spent": 100,
        "remaining": 0,
        "resets_at": "2026-12-05T00:00:00+01:00",
    }
    assert left["month"]["limit"] is None and left["month"]["remaining"] is None
    # another user and the admin are not affected
    assert (await service.handle(as_user("bob", "bob"), LocalReply())).reply == "echo: bob"
    await spend(service.memory.db, "admin", morning, 10**6)
    assert (await service.handle(as_user("boss", None), LocalReply())).reply == "echo: boss"
    assert (await budget.remaining("admin"))["exempt"] is True


async def test_the_daily_budget_resets_at_midnight_in_the_zone(service: ChatService) -> None:
    clock = Clock(dt.datetime(2026, 12, 4, 23, 59, 30, tzinfo=BERLIN))
    budgets(service, clock, user_day=50)
    # 23:30 UTC on the 4th is already the 5th in Berlin: not today's
    await spend(service.memory.db, "api:alice", dt.datetime(2026, 12, 4, 12, tzinfo=BERLIN), 50)
    with pytest.raises(BudgetExceeded):
        await service.handle(as_user("late"), LocalReply())
    clock.set(dt.datetime(2026, 12, 5, 0, 0, 1, tzinfo=BERLIN))
    assert (await service.handle(as_user("early"), LocalReply())).reply == "echo: early"


async def test_the_monthly_budget_sums_the_month_and_resets_on_the_first(
    service: ChatService,
) -> None:
    clock = Clock(dt.datetime(2026, 11, 30, 23, 59, tzinfo=BERLIN))
    budgets(service, clock, user_month=300)
    db = service.memory.db
    await spend(db, "api:alice", dt.datetime(2026, 10, 31, 23, 0, tzinfo=BERLIN), 1000)  # October
    for day in (1, 10, 30):
        await spend(db, "api:alice", dt.datetime(2026, 11, day, 8, tzinfo=BERLIN), 100)
    with pytest.raises(BudgetExceeded) as refused:
        await service.handle(as_user("november"), LocalReply())
    assert refused.value.fields["resets_at"] == "2026-12-01T00:00:00+01:00"
    assert refused.value.fields["period"] == "month"
    clock.set(dt.datetime(2026, 12, 1, 0, 0, 1, tzinfo=BERLIN))
    assert (await service.handle(as_user("december"), LocalReply())).reply == "echo: december"


async def test_operator_override_beats_the_default(service: ChatService) -> None:
    clock = Clock(dt.datetime(2026, 12, 4, 12, tzinfo=BERLIN))
    budget = budgets(service, clock, user_day=10)
    await spend(service.memory.db, "api:alice", dt.datetime(2026, 12, 4, 9, tzinfo=BERLIN), 20)
    await budget.set_override("api:alice", 1000, None)
    assert (await service.handle(as_user("more"), LocalReply())).reply == "echo: more"
    assert await budget.clear_override("api:alice")
    with pytest.raises(BudgetExceeded):
        await service.handle(as_user("again"), LocalReply())


async def test_heads_up_at_80_percent_is_sent_once_per_period(service: ChatService) -> None:
    clock = Clock(dt.datetime(2026, 12, 4, 12, tzinfo=BERLIN))
    budgets(service, clock, user_day=100)
    await spend(service.memory.db, "api:alice", dt.datetime(2026, 12, 4, 9, tzinfo=BERLIN), 80)
    first, second = LocalReply(), LocalReply()
    await service.handle(as_user("q1"), first)
    await service.handle(as_user("q2"), second)
    assert first.messages[0].startswith("ℹ️ Heads-up: you have used 80 % of your daily budget")
    assert not any("Heads-up" in m for m in second.messages)
    clock.set(dt.datetime(2026, 12, 5, 12, tzinfo=BERLIN))  # a new day: told again at 80 %
    await spend(service.memory.db, "api:alice", dt.datetime(2026, 12, 5, 9, tzinfo=BERLIN), 90)
    third = LocalReply()
    await service.handle(as_user("q3"), third)
    assert "Heads-up" in third.messages[0]


async def test_total_budget_alerts_the_operator_and_refuses_users(service: ChatService) -> None:
    clock = Clock(dt.datetime(2026, 12, 4, 12, tzinfo=BERLIN))
    budget = budgets(service, clock, total_day=1000)
    periods = Periods.at(clock(), BERLIN)
    alerts: list[tuple[str, bool]] = []

    async def condition(key: str, active: bool, **fields: Any) -> None:
        alerts.append((fields["alert_type"], active))

    async def total_to(tokens: int) -> None:  # at least: the turns' own usage counts too
        missing = max(0, tokens - await budget.spent_total(periods))
        await spend(service.memory.db, "tg:2", dt.datetime(2026, 12, 4, 9, tzinfo=BERLIN), missing)

    budget.alert = condition
    await total_to(799)
    await service.handle(as_user("a"), LocalReply())
    assert ("budget_total_80", False) in alerts
    await total_to(999)
    alerts.clear()
    await service.handle(as_user("b"), LocalReply())
    assert ("budget_total_80", True) in alerts
    assert ("budget_total_exceeded", False) in alerts
    await total_to(1000)
    alerts.clear()
    with pytest.raises(BudgetExceeded) as refused:
        await service.handle(as_user("c"), LocalReply())
    assert refused.value.fields["period"] == "total_day"
    assert ("budget_total_exceeded", True) in alerts
    assert (await service.handle(as_user("admin", None), LocalReply())).reply == "echo: admin"


async def test_rate_limit_refuses_the_user_not_the_others(service: ChatService) -> None:
    now = [100.0]
    service.rate_limiter = RateLimiter(2, clock=lambda: now[0])
    await service.handle(as_user("1", chat="local:r1"), LocalReply())
    await service.handle(as_user("2", chat="local:r2"), LocalReply())
    with pytest.raises(UserRateLimited) as refused:
        await service.handle(as_user("3", chat="local:r3"), LocalReply())
    assert refused.value.to_dict()["code"] == "rate_limited"
    assert refused.value.fields["retry_after"] == 60
    assert "too fast" in refused.value.message
    await service.handle(as_user("other", "bob"), LocalReply())
    await service.handle(as_user("admin", None), LocalReply())
    await service.handle(as_user("admin", None), LocalReply())
    await service.handle(as_user("/help"), LocalReply())  # commands are not counted
    now[0] += 60.0
    await service.handle(as_user("4", chat="local:r3"), LocalReply())


async def test_a_burst_of_one_user_does_not_starve_another(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    """Concurrency 1: alice sends 20 messages at once (20 chats), then bob one."""
    fake_llm.token_delay_s = 0.02
    service.rate_limiter = None
    burst = [
        asyncio.ensure_future(service.handle(as_user(f"a{i}", chat=f"local:a{i}"), LocalReply()))
        for i in range(20)
    ]
    while service.limiter.waiting < 19:
        await asyncio.sleep(0.005)
    bob = await service.handle(as_user("bob here", "bob", chat="local:bob"), LocalReply())
    assert bob.reply == "echo: bob here"
    await asyncio.gather(*burst)
    asked = [r["messages"][-1]["content"] for r in fake_llm.requests]
    # one of alice's turns was running, at most one more ran before bob's
    assert asked.index("bob here") <= 2, asked


async def test_idle_chat_starts_a_fresh_context_and_keeps_the_summary(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    now = [1_000_000.0]
    service.memory.clock = lambda: now[0]
    service.clock = lambda: now[0]
    service.idle_reset_s = 600.0
    chat = "local:idle"
    await service.handle(as_user("my name is Ada", None, chat), LocalReply())
    await service.memory.fold(chat, upto_id=1, summary="The user is called Ada.")
    now[0] += 599.0
    kept = LocalReply()
    await service.handle(as_user("still here", None, chat), kept)
    assert IDLE_RESET_NOTE not in kept.messages
    assert any("still here" in m["content"] for m in fake_llm.requests[-1]["messages"])
    now[0] += 600.0
    fresh = LocalReply()
    result = await service.handle(as_user("hello again", None, chat), fresh)
    assert fresh.messages[0] == IDLE_RESET_NOTE
    assert result.reply == "echo: hello again"
    prompt = fake_llm.requests[-1]["messages"]
    assert [m["content"] for m in prompt[1:]] == ["hello again"]
    assert "Ada" not in prompt[0]["content"]
    summary = await service.handle(as_user("/summary", None, chat), LocalReply())
    assert "Ada" in summary.reply
    history = await service.memory.history(chat, limit=10)
    assert len(history) == 6  # nothing deleted


def test_periods_follow_the_zone_across_dst() -> None:
    # the night the clocks go back in Berlin: that day has 25 hours
    periods = Periods.at(dt.datetime(2026, 10, 25, 12, tzinfo=BERLIN).timestamp(), BERLIN)
    assert periods.day_end - periods.day_start == 25 * 3600
    assert periods.month == "2026-10"


def test_parse_user() -> None:
    assert parse_user("123") == "tg:123"
    assert parse_user("tg:123") == "tg:123"
    assert parse_user("api:alice") == "api:alice"
    for bad in ("", "alice", "tg:x", "api:", "api:" + "x" * 65):
        with pytest.raises(ValueError):
            parse_user(bad)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VIGIL_BUDGET_USER_TOKENS_DAY", "-1"),
        ("VIGIL_BUDGET_USER_TOKENS_MONTH", "lots"),
        ("VIGIL_BUDGET_TOTAL_TOKENS_DAY", "1e99"),
        ("VIGIL_TIMEZONE", "Mars/Olympus"),
        ("VIGIL_TIMEZONE", "../../etc/passwd"),
        ("VIGIL_RATE_LIMIT_USER_PER_MIN", "-5"),
        ("VIGIL_CONTEXT_IDLE_RESET_MIN", "soon"),
    ],
)
def test_bad_setting_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_settings(data_dir=tmp_path)
    assert str(error.value).startswith(name + ":")
    assert "\n" not in str(error.value)


def test_api_answers_429_for_budget_and_rate_limit(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        budget_user_tokens_day=10,
        rate_limit_user_per_min=3,
        timezone="UTC",
    )
    server: LiveServer = live_server_factory(settings)

    def post(text: str, **kwargs: Any) -> Any:
        return server.client.post(
            "/api/chats/api1/messages", json={"text": text, "user": "carol"}, **kwargs
        )

    first = post("hi")
    assert first.status_code == 200
    assert "notices" not in first.json()
    at = dt.datetime.now(dt.UTC)

    async def used(runtime: Any) -> None:
        await spend(runtime.db, "api:carol", at, 10)

    server.call(used)
    calls = len(fake_llm.requests)
    for kwargs in ({}, {"headers": {"Accept": "text/event-stream"}}):
        refused = post("more", **kwargs)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded"
        tomorrow = (at + dt.timedelta(days=1)).date().isoformat()
        assert error["resets_at"] == f"{tomorrow}T00:00:00+00:00"
        assert "message" in error
    assert len(fake_llm.requests) == calls
    limited = post("again")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # the admin (no "user") is exempt from both
    assert server.chat("api1", "admin").status_code == 200
    metrics = server.client.get("/metrics").text
    assert "vigil_budget_refusals_total 2.0" in metrics
    assert "vigil_turns_rejected_total 1.0" in metrics


@pytest.mark.slow
def test_telegram_gets_polite_replies_and_the_model_is_not_called(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    from tests.core.telegram.test_app import ADA, BOB, Tg, tg_settings
    from tests.fake_telegram import FakeTelegram

    settings = tg_settings(
        tmp_path, fake_llm, budget_user_tokens_day=10, rate_limit_user_per_min=2, timezone="UTC"
    )
    fake = FakeTelegram()
    tg = Tg(live_server_factory(settings, telegram=fake.factory), fake)
    tg.say("hi", sender=BOB, chat_id=43)
    at = dt.datetime.now(dt.UTC)

    async def used(runtime: Any) -> None:
        await spend(runtime.db, "tg:43", at, 10)

    tg.server.call(used)
    tg.say("more", sender=BOB, chat_id=43)
    tg.say("again", sender=BOB, chat_id=43)
    texts = fake.texts(43)
    assert texts[0] == "echo: hi"
    assert texts[1].startswith("You have used your daily budget of 10 tokens. It resets at ")
    assert texts[2].startswith("You are sending messages too fast (limit 2 a minute)")
    assert len(fake_llm.requests) == 1
    for i in range(3):  # the admin (ADA) is exempt from both
        tg.say(f"boss {i}", sender=ADA, chat_id=42)
    assert fake.texts(42) == [f"echo: boss {i}" for i in range(3)]


def test_a_reload_applies_new_limits_from_the_next_turn(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    from core.reload import reload_server

    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, timezone="UTC")
    server: LiveServer = live_server_factory(settings)

    def post(text: str) -> Any:
        return server.client.post("/api/chats/r/messages", json={"text": text, "user": "dan"})

    assert post("one").status_code == 200

    async def used(runtime: Any) -> None:
        await spend(runtime.db, "api:dan", dt.datetime.now(dt.UTC), 50)

    server.call(used)
    assert post("two").status_code == 200  # no budget yet

    def load() -> Any:
        return make_settings(
            tmp_path,
            llm_base_url=fake_llm.url,
            port=settings.port,
            timezone="Asia/Tokyo",
            budget_user_tokens_month=50,
            rate_limit_user_per_min=5,
            context_idle_reset_min=30,
        )

    async def hup(runtime: Any) -> Any:
        return reload_server(runtime, load=load)

    result = server.call(hup)
    assert sorted(result.applied) == [
        "budget_user_tokens_month",
        "context_idle_reset_min",
        "rate_limit_user_per_min",
        "timezone",
    ]
    refused = post("three")
    assert refused.status_code == 429
    assert refused.json()["error"]["resets_at"].endswith("T00:00:00+09:00")
    chat = server.runtime.chat
    assert chat.rate_limiter is not None and chat.rate_limiter.per_min == 5
    assert chat.idle_reset_s == 1800.0


async def test_limiter_serves_keys_round_robin_and_survives_cancelled_waiters() -> None:
    from core.admission import AdjustableLimiter

    limiter = AdjustableLimiter(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def turn(key: str, name: str) -> None:
        async with limiter.slot(key):
            order.append(name)
            await gate.wait()

    first = asyncio.ensure_future(turn("a", "a0"))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(turn("a", f"a{i}")) for i in range(1, 4)]
    waiters += [asyncio.ensure_future(turn("b", "b1")), asyncio.ensure_future(turn("c", "c1"))]
    await asyncio.sleep(0)
    assert limiter.waiting == 5
    waiters[1].cancel()  # a2 gives up while queued
    await asyncio.sleep(0)
    assert limiter.waiting == 4
    gate.set()
    await asyncio.gather(first, *waiters, return_exceptions=True)
    assert order == ["a0", "a1", "b1", "c1", "a3"]
    assert (limiter.active, limiter.waiting) == (0, 0)


async def test_a_turn_not_yet_written_to_the_usage_table_counts(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    """Usage rows are written in batches: the check counts the unwritten ones too."""
    clock = Clock(dt.datetime.now(BERLIN))
    budgets(service, clock, user_day=1)
    assert (await service.handle(as_user("first"), LocalReply())).reply == "echo: first"
    assert service.usage.pending  # recorded, not yet flushed
    calls = len(fake_llm.requests)
    with pytest.raises(BudgetExceeded):
        await service.handle(as_user("second"), LocalReply())
    assert len(fake_llm.requests) == calls
    await service.usage.flush(service.memory.db)
    with pytest.raises(BudgetExceeded):  # the same once written
        await service.handle(as_user("third"), LocalReply())


async def test_a_budgeted_user_in_two_chats_at_once_goes_over_by_one_turn_at_most(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    fake_llm.token_delay_s = 0.02
    service.limiter.limit = 4
    clock = Clock(dt.datetime.now(BERLIN))
    budgets(service, clock, user_day=1)
    turns = [
        asyncio.ensure_future(service.handle(as_user(f"q{i}", chat=f"local:p{i}"), LocalReply()))
        for i in range(4)
    ]
    outcomes = await asyncio.gather(*turns, return_exceptions=True)
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(answered) == 1, outcomes
    assert all(isinstance(o, BudgetExceeded) for o in outcomes if o not in answered)
    assert len(fake_llm.requests) == 1
    assert not service._user_locks  # nothing left behind
    # the admin's turns are neither serialized nor refused
    both = await asyncio.gather(
        service.handle(as_user("boss 1", None, "local:x1"), LocalReply()),
        service.handle(as_user("boss 2", None, "local:x2"), LocalReply()),
    )
    assert [r.reply for r in both] == ["echo: boss 1", "echo: boss 2"]


def test_a_json_api_client_gets_the_heads_up_in_notices(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    settings = make_settings(
        tmp_path, llm_base_url=fake_llm.url, budget_user_tokens_day=1000, timezone="UTC"
    )
    server: LiveServer = live_server_factory(settings)

    async def used(runtime: Any) -> None:
        await spend(runtime.db, "api:erin", dt.datetime.now(dt.UTC), 850)

    server.call(used)

    def post(text: str) -> dict[str, Any]:
        response = server.client.post("/api/chats/n/messages", json={"text": text, "user": "erin"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    first = post("one")
    assert first["reply"] == "echo: one"
    assert [n[:40] for n in first["notices"]] == ["ℹ️ Heads-up: you have used 85 % of your "]
    assert "notices" not in post("two")  # once per period


async def test_a_batch_being_written_still_counts(service: ChatService, fake_llm: FakeLLM) -> None:
    """While a flush waits for the writer, its rows are in neither list nor table:
    they must still count (else a user could slip past the limit at that moment)."""
    clock = Clock(dt.datetime.now(BERLIN))
    budgets(service, clock, user_day=1)
    assert (await service.handle(as_user("first"), LocalReply())).reply == "echo: first"
    db = service.memory.db
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold_the_writer() -> None:
        async with db.transaction():
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold_the_writer())
    await holding.wait()
    flush = asyncio.create_task(service.usage.flush(db))
    await asyncio.sleep(0.05)  # the flush took the batch and waits for the writer
    assert not service.usage.pending and service.usage.writing
    calls = len(fake_llm.requests)
    with pytest.raises(BudgetExceeded):  # refused before it would wait for the writer
        await asyncio.wait_for(service.handle(as_user("second"), LocalReply()), 5)
    assert len(fake_llm.requests) == calls
    release.set()
    await holder
    assert await flush == 1
    assert not service.usage.unwritten()
