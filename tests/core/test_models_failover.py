"""Model profiles, the rest: a hung primary, the re-probe gap, the hold after failed
calls, each profile's context window, and what /health and /status say.

Real fake model servers (real HTTP/SSE; a real socket that never answers for the
hung one), real SQLite; the models' monotonic clock is moved by hand.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core import health
from core.channel import IncomingMessage
from core.config import ConfigError, Settings, load_settings
from core.runtime import Runtime
from tests.conftest import make_settings
from tests.core.test_models import Clock, TelegramLike
from tests.fake_llm import FakeLLM, HungServer, text_of

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima " * 3


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backup() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        server.reply = lambda messages: "from backup"
        yield server


@pytest.fixture
def main() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        server.reply = lambda messages: "from main"
        yield server


@pytest.fixture
def runtime_factory(runtime_factory: Callable[..., Any], clock: Clock) -> Callable[..., Any]:
    """Runtimes whose models run on the test's clock."""
    return functools.partial(runtime_factory, clock=clock)


def two(
    tmp_path: Path,
    main_url: str,
    backup_url: str,
    *,
    main: Any = None,
    backup: Any = None,
    **kw: Any,
) -> Settings:
    spec = {
        "main": {"base_url": main_url, "model": "m-main", **(main or {})},
        "backup": {"base_url": backup_url, "model": "m-backup", **(backup or {})},
    }
    values: dict[str, Any] = {
        "llm_models": json.dumps(spec),
        "llm_fallback": "backup",
        "llm_max_retries": 0,
    }
    values.update(kw)
    return make_settings(tmp_path, **values)


def say(text: str, chat: str = "tg:5") -> IncomingMessage:
    return IncomingMessage(chat, text, user_id="5")


# --- a hung primary and the re-probe gap ----------------------------------------------


async def test_a_hung_primary_falls_back_within_the_timeout_then_is_skipped(
    tmp_path: Path, backup: FakeLLM, runtime_factory: Callable[..., Any], clock: Clock
) -> None:
    with HungServer() as hung:
        settings = two(tmp_path, hung.url, backup.url, llm_timeout_s=0.5)
        runtime = await runtime_factory(settings)
        chat, models = runtime.chat, runtime.models
        channel = TelegramLike()

        first = await chat.handle(say("hello"), channel)  # waits for the timeout, once
        assert first.model == "backup" and first.error_code is None
        assert hung.posts() == 1
        assert models.clients["main"].status.code == "llm_timeout"

        second = await chat.handle(say("again"), channel)  # known down: not waited on
        assert second.model == "backup" and hung.posts() == 1
        await models.wait_probes()  # the re-probe this turn started (hung: it times out)
        assert hung.gets() == 1 and models.clients["main"].status.state == "unreachable"

        for text in ("three", "four", "five"):  # within the gap: no new probe
            result = await chat.handle(say(text), channel)
            assert result.model == "backup"
        await models.wait_probes()
        assert hung.posts() == 1 and hung.gets() == 1

        clock.advance(models.reprobe_gap_s)  # the gap is over: one more probe
        await chat.handle(say("six"), channel)
        await models.wait_probes()
        assert hung.gets() == 2 and hung.posts() == 1


async def test_a_primary_back_after_the_gap_answers_again(
    tmp_path: Path,
    main: FakeLLM,
    backup: FakeLLM,
    runtime_factory: Callable[..., Any],
    clock: Clock,
) -> None:
    main.fail_status, main.fail_times, main.models_status = 503, -1, 503
    runtime = await runtime_factory(two(tmp_path, main.url, backup.url))
    chat, models = runtime.chat, runtime.models
    channel = TelegramLike()
    assert (await chat.handle(say("one"), channel)).model == "backup"
    assert (await chat.handle(say("two"), channel)).model == "backup"  # probe 1 starts
    await models.wait_probes()
    assert main.models_requests == 1
    main.fail_times, main.models_status = 0, 200  # back
    assert (await chat.handle(say("three"), channel)).model == "backup"  # gap: no probe yet
    await models.wait_probes()
    assert main.models_requests == 1
    clock.advance(models.reprobe_gap_s)
    assert (await chat.handle(say("four"), channel)).model == "backup"  # probed: it answers
    await models.wait_probes()
    assert main.models_requests == 2
    back = await chat.handle(say("five"), channel)
    assert back.model == "main" and back.reply == "from main"
    assert models.clients["main"].outages == 0


async def test_models_answering_but_completions_failing_is_held_not_tried_every_turn(
    tmp_path: Path,
    main: FakeLLM,
    backup: FakeLLM,
    runtime_factory: Callable[..., Any],
    clock: Clock,
) -> None:
    # GET /models answers 200, every completion 503: the probe alone says "ok".
    main.fail_status, main.fail_times = 503, -1
    runtime = await runtime_factory(two(tmp_path, main.url, backup.url, llm_max_retries=1))
    runtime.models.clients["main"].backoff_s = 0.01
    chat, models = runtime.chat, runtime.models
    channel = TelegramLike()
    gap = models.reprobe_gap_s

    async def turn(text: str) -> str | None:
        result = await chat.handle(say(text), channel)
        assert result.error_code is None
        await models.wait_probes()
        return result.model

    assert await turn("one") == "backup" and len(main.requests) == 2  # with its retry
    assert await turn("two") == "backup"  # skipped; its re-probe says ok
    assert models.clients["main"].status.state == "ok"
    assert await turn("three") == "backup" and len(main.requests) == 2  # held: not tried
    assert models.states()["main"]["down"] is True

    clock.advance(gap)  # the hold is over: one trial (not retried), which fails again
    assert await turn("four") == "backup" and len(main.requests) == 3
    assert models.clients["main"].outages == 2
    clock.advance(gap)
    await turn("five")  # the probe answers, but the hold doubled: not tried
    assert await turn("six") == "backup" and len(main.requests) == 3
    clock.advance(gap)
    main.fail_times = 0  # healed: the next trial answers and ends the hold
    assert await turn("seven") == "main" and len(main.requests) == 4
    assert models.clients["main"].outages == 0
    assert await turn("eight") == "main"


# --- each profile's context window --------------------------------------------------


async def fill(runtime: Runtime, chat_id: str, turns: int) -> None:
    for i in range(turns):
        await runtime.memory.append(chat_id, "user", f"question {i}: {WORDS}")
        await runtime.memory.append(chat_id, "assistant", f"answer {i}: {WORDS}")


def request_tokens(body: dict[str, Any]) -> int:
    return sum(4 + (len(text_of(m["content"])) + 3) // 4 for m in body["messages"])


async def test_a_profile_context_tokens_cuts_its_prompt(
    tmp_path: Path,
    main: FakeLLM,
    backup: FakeLLM,
    runtime_factory: Callable[..., Any],
) -> None:
    # main: a 1,000-token window with 400 for the answer -> at most 600 for the prompt.
    settings = two(
        tmp_path,
        main.url,
        backup.url,
        main={"context_tokens": 1000, "max_tokens": 400},
        llm_fallback=None,
    )
    runtime = await runtime_factory(settings)
    await fill(runtime, "tg:5", 12)  # ~1,700 tokens: within VIGIL_CONTEXT_MAX_TOKENS
    await fill(runtime, "tg:6", 12)
    channel = TelegramLike()

    small = await runtime.chat.handle(say("the newest question", "tg:5"), channel)
    assert small.model == "main"
    body = main.requests[-1]
    assert request_tokens(body) <= 600 and body["max_tokens"] == 400
    assert text_of(body["messages"][-1]["content"]) == "the newest question"
    window = await runtime.memory.window("tg:5")
    assert "- user: question" in window.summary  # what was cut is folded, as usual

    await runtime.chat.handle(say("/model backup", "tg:6"), channel)
    big = await runtime.chat.handle(say("the newest question", "tg:6"), channel)
    assert big.model == "backup"
    assert len(backup.requests[-1]["messages"]) == 1 + 24 + 1  # no window set: all of it


async def test_a_smaller_fallback_gets_the_newest_turns_that_fit_and_folds_nothing(
    tmp_path: Path,
    main: FakeLLM,
    backup: FakeLLM,
    runtime_factory: Callable[..., Any],
    clock: Clock,
) -> None:
    settings = two(
        tmp_path, main.url, backup.url, backup={"context_tokens": 800, "max_tokens": 300}
    )
    runtime = await runtime_factory(settings)
    await fill(runtime, "tg:5", 12)
    channel = TelegramLike()
    main.fail_status, main.fail_times = 503, 1

    result = await runtime.chat.handle(say("the newest question"), channel)
    assert result.model == "backup"
    full, cut = main.requests[-1]["messages"], backup.requests[-1]["messages"]
    assert len(full) == 1 + 24 + 1 and len(cut) < len(full)
    assert cut[0] == full[0] and cut[1:] == full[len(full) - len(cut) + 1 :]  # the newest
    assert cut[1]["role"] == "user" and request_tokens(backup.requests[-1]) <= 500
    window = await runtime.memory.window("tg:5")
    assert window.summary == ""  # nothing folded for the fallback's sake

    await runtime.models.probe_all()
    clock.advance(runtime.models.reprobe_gap_s)  # main answers its probe, its hold is over
    again = await runtime.chat.handle(say("and now?"), channel)  # main answers: all of it
    assert again.model == "main" and len(main.requests[-1]["messages"]) == 1 + 26 + 1


def test_a_window_too_small_for_the_answer_is_refused(tmp_path: Path) -> None:
    spec = {"a": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "context_tokens": 1000}}
    with pytest.raises(ConfigError) as info:
        load_settings(data_dir=tmp_path, llm_models=json.dumps(spec), llm_max_tokens=2048)
    message = str(info.value)
    assert "context_tokens (1000) must be at least its max_tokens (2048) + 64" in message
    assert "\n" not in message


# --- /health and /status ----------------------------------------------------------------


async def test_a_down_fallback_degrades_health_and_status_names_it(
    tmp_path: Path, main: FakeLLM, backup: FakeLLM, runtime_factory: Callable[..., Any]
) -> None:
    runtime = await runtime_factory(two(tmp_path, main.url, backup.url))
    await runtime.models.probe_all()
    report = await health.health_report(runtime)
    assert report["status"] == "healthy" and report["reasons"] == []

    backup.stop()
    await runtime.models.probe_all()
    report = await health.health_report(runtime)
    assert report["status"] == "degraded" and report["llm"] == "ok"
    assert report["reasons"] == ["llm_profile_down:backup"]
    llm = report["checks"]["llm"]
    assert {"status", "url", "model", "detail", "code", "profile"} <= set(llm)
    assert llm["profiles"]["backup"]["down"] is True and llm["profiles"]["main"]["down"] is False
    channel = TelegramLike()
    await runtime.chat.handle(say("/status"), channel)
    assert "model ok, backup down" in channel.messages[-1]
    assert "this chat" not in channel.messages[-1]  # the default: not repeated

    await runtime.chat.handle(IncomingMessage("ops", "/model backup"), channel)
    await runtime.chat.handle(IncomingMessage("ops", "/status"), channel)
    assert channel.messages[-1].endswith(" · this chat: backup down")
