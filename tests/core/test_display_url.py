"""What logs, /health and chatters see of the model's URL: never a password or a query value."""

from __future__ import annotations

import pytest

from core.errors import LLMUnavailable
from core.llm import LLMClient, display_url
from tests.fake_llm import dead_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1"),
        ("https://bob:hunter2@llm.example.com/v1", "https://llm.example.com/v1"),
        ("https://llm.example.com/v1?api_key=s3cret", "https://llm.example.com/v1?api_key=***"),
        (
            "https://u:p@llm.example.com:8443/v1?key=s3cret&x=",
            "https://llm.example.com:8443/v1?key=***&x=***",
        ),
    ],
)
def test_display_url_hides_passwords_and_query_values(url: str, shown: str) -> None:
    assert display_url(url) == shown


async def test_an_unreachable_model_is_named_without_its_query_secret() -> None:
    llm = LLMClient(base_url=dead_url() + "/v1?api_key=s3cret", model="m", max_retries=0)
    try:
        with pytest.raises(LLMUnavailable) as caught:
            async for _ in llm.stream([{"role": "user", "content": "hi"}]):
                pass
    finally:
        await llm.aclose()
    assert "s3cret" not in caught.value.message and "api_key=***" in caught.value.message
    assert "s3cret" not in repr(llm.status)
