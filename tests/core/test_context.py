"""ContextWindowManager: limits, folding into the running summary, refinement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.channel import Turn
from core.context import ContextWindowManager, extractive_summary, plan_window
from core.database import Database
from core.memory import ChatMemory, estimate_tokens


def turns(*specs: tuple[str, int]) -> list[Turn]:
    return [Turn(i + 1, "c", role, f"t{i}", tokens, 0.0) for i, (role, tokens) in enumerate(specs)]


def test_plan_respects_message_limit() -> None:
    history = turns(*[("user" if i % 2 == 0 else "assistant", 1) for i in range(10)])
    fold, keep = plan_window(history, max_messages=4, max_tokens=10_000)
    assert [t.id for t in keep] == [7, 8, 9, 10]
    assert [t.id for t in fold] == [1, 2, 3, 4, 5, 6]


def test_plan_respects_token_budget_and_keeps_newest_turn() -> None:
    history = turns(("user", 50), ("assistant", 50), ("user", 5000))
    fold, keep = plan_window(history, max_messages=100, max_tokens=100)
    assert [t.id for t in keep] == [3]  # over budget alone, still included
    assert [t.id for t in fold] == [1, 2]


def test_plan_never_starts_with_an_orphan_answer() -> None:
    history = turns(("user", 1), ("assistant", 1), ("user", 1), ("assistant", 1), ("user", 1))
    fold, keep = plan_window(history, max_messages=4, max_tokens=10_000)
    assert keep[0].role == "user"
    assert len(fold) + len(keep) == 5


def test_extractive_summary_is_bounded() -> None:
    many = turns(*[("user", 1)] * 200)
    summary = extractive_summary("", many, max_tokens=50, estimate=estimate_tokens)
    assert estimate_tokens(summary) <= 50
    assert summary.splitlines()[-1] == "- user: t199"


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[ChatMemory]:
    db = Database(tmp_path / "system.db")
    await db.open()
    yield ChatMemory(db)
    await db.close()


async def test_build_folds_overflow_into_stored_summary(memory: ChatMemory) -> None:
    manager = ContextWindowManager(memory, system_prompt="SYS", max_messages=4, max_tokens=10_000)
    for i in range(6):
        role = "user" if i % 2 == 0 else "assistant"
        await memory.append("local:f", role, f"Sentence {i}. Extra detail {i}.")
    prompt = await manager.build("local:f")
    assert [m["content"] for m in prompt.messages[1:]] == [
        "Sentence 2. Extra detail 2.",
        "Sentence 3. Extra detail 3.",
        "Sentence 4. Extra detail 4.",
        "Sentence 5. Extra detail 5.",
    ]
    assert prompt.folded == 2
    assert "- user: Sentence 0." in prompt.messages[0]["content"]
    chat = await memory.chat("local:f")
    assert chat["summary"] == "- user: Sentence 0.\n- assistant: Sentence 1."
    memory.evict("local:f")  # after a restart the same prompt comes back
    again = await manager.build("local:f")
    assert again.messages == prompt.messages


async def test_group_speakers_are_named(memory: ChatMemory) -> None:
    manager = ContextWindowManager(memory, system_prompt="SYS")
    await memory.append("tg:-100", "user", "hello all", author="Ada")
    prompt = await manager.build("tg:-100")
    assert prompt.messages[-1]["content"] == "Ada: hello all"


async def test_refine_replaces_summary_with_the_models(memory: ChatMemory) -> None:
    manager = ContextWindowManager(memory, system_prompt="SYS", max_messages=2)
    for i in range(4):
        await memory.append("local:g", "user" if i % 2 == 0 else "assistant", f"fact {i}")
    await manager.build("local:g")

    async def model(request: str) -> str:
        assert "fact 0" in request
        return "The user shared facts 0 and 1."

    assert await manager.refine("local:g", model) is True
    assert (await memory.chat("local:g"))["summary"] == "The user shared facts 0 and 1."


async def test_refine_does_not_clobber_a_newer_fold(memory: ChatMemory) -> None:
    manager = ContextWindowManager(memory, system_prompt="SYS", max_messages=2)
    for i in range(4):
        await memory.append("local:h", "user" if i % 2 == 0 else "assistant", f"fact {i}")
    await manager.build("local:h")

    async def slow_model(request: str) -> str:
        for i in range(4, 8):
            await memory.append("local:h", "user" if i % 2 == 0 else "assistant", f"fact {i}")
        await manager.build("local:h")  # folds more while the model "thinks"
        return "stale summary"

    assert await manager.refine("local:h", slow_model) is False
    assert "fact 4" in (await memory.chat("local:h"))["summary"]


async def test_a_summary_refined_elsewhere_is_kept_by_the_next_fold(memory: ChatMemory) -> None:
    manager = ContextWindowManager(memory, system_prompt="SYS", max_messages=2)
    for i in range(4):
        await memory.append("local:w", "user" if i % 2 == 0 else "assistant", f"fact {i}")
    await manager.build("local:w")  # folds facts 0-1, window now cached
    upto = (await memory.chat("local:w"))["summary_upto_id"]
    # The worker process refines the summary straight in the database.
    await memory.db.write(
        "UPDATE chats SET summary = 'Refined by the worker.' WHERE id = ? AND summary_upto_id = ?",
        ("local:w", upto),
    )
    for i in range(4, 6):
        await memory.append("local:w", "user" if i % 2 == 0 else "assistant", f"fact {i}")
    await manager.build("local:w")
    summary = (await memory.chat("local:w"))["summary"]
    assert summary.startswith("Refined by the worker.")
    assert "fact 2" in summary
