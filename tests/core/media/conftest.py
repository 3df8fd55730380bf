"""Fixtures of the image tests: a text model and a vision model (real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_llm import FakeLLM


@pytest.fixture
def pair() -> Iterator[tuple[FakeLLM, FakeLLM]]:
    """(text, eyes): two fake model servers answering "from text" / "from eyes"."""
    with FakeLLM() as text, FakeLLM() as eyes:
        text.reply = lambda messages: "from text"
        eyes.reply = lambda messages: "from eyes"
        yield text, eyes
