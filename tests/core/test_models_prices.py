"""Per-profile prices: each usage row is priced at the prices of the profile that
answered, each price falling back to the global one.

Real fake model servers (real HTTP/SSE), real SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core import usage
from core.channel import IncomingMessage
from core.config import ConfigError, load_settings
from tests.conftest import make_settings
from tests.core.test_models import SECRET, TelegramLike
from tests.fake_llm import FakeLLM


@pytest.fixture
def pair() -> Iterator[tuple[FakeLLM, FakeLLM]]:
    with FakeLLM() as main, FakeLLM() as backup:
        yield main, backup


async def test_each_profile_is_priced_at_its_own_prices(
    tmp_path: Path,
    pair: tuple[FakeLLM, FakeLLM],
    runtime_factory: Callable[..., Any],
) -> None:
    main, backup = pair
    spec = {
        "main": {
            "base_url": main.url,
            "model": "m-main",
            "price_input_per_1m": 1.0,
            "price_output_per_1m": 2.5,
        },
        "backup": {"base_url": backup.url, "model": "m-backup", "price_output_per_1m": 7},
    }
    settings = make_settings(
        tmp_path,
        llm_models=json.dumps(spec),
        llm_price_input_per_1m=100.0,  # backup's input price: the global one
        llm_price_output_per_1m=1000.0,  # used by nobody here
    )
    chat = (await runtime_factory(settings)).chat
    channel = TelegramLike()
    assert (
        await chat.handle(IncomingMessage("tg:5", "hello there", user_id="5"), channel)
    ).model == "main"
    await chat.handle(IncomingMessage("tg:5", "/model backup", user_id="5"), channel)
    for text in ("one more", "and another one"):
        answered = await chat.handle(IncomingMessage("tg:5", text, user_id="5"), channel)
        assert answered.model == "backup"
    await chat.usage.flush(chat.memory.db)

    rows = await chat.memory.db.fetchall(
        "SELECT model, prompt_tokens, completion_tokens FROM usage WHERE user_id = '5'"
    )
    rate = {"main": (1.0, 2.5), "backup": (100.0, 7.0)}
    expected = (
        sum(
            r["prompt_tokens"] * rate[r["model"]][0] + r["completion_tokens"] * rate[r["model"]][1]
            for r in rows
        )
        / 1e6
    )
    assert {r["model"] for r in rows} == {"main", "backup"} and expected > 0

    report = await usage.summary(chat.memory.db, since=0, prices=chat.usage.prices)
    assert report["prices_set"] is True
    assert report["users"][0]["cost"] == pytest.approx(expected, abs=1e-6)
    assert report["total"]["cost"] == pytest.approx(expected, abs=1e-6)
    assert report["days"][0]["cost"] == pytest.approx(expected, abs=1e-6)

    await chat.handle(IncomingMessage("tg:5", "/usage", user_id="5"), channel)
    assert f"(cost {expected:.4f})" in channel.messages[-1]


@pytest.mark.parametrize(
    ("price", "value"),
    [
        ("price_input_per_1m", -1),
        ("price_output_per_1m", "cheap"),
        ("price_input_per_1m", True),
        ("price_output_per_1m", float("inf")),
    ],
)
def test_a_bad_profile_price_is_one_line(tmp_path: Path, price: str, value: Any) -> None:
    spec = {"a": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key": SECRET}}
    spec["a"][price] = value
    with pytest.raises(ConfigError) as info:
        load_settings(data_dir=tmp_path, llm_models=json.dumps(spec))
    message = str(info.value)
    assert f"profile 'a': {price} must be a number >= 0" in message
    assert "\n" not in message and SECRET not in message
