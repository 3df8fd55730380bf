"""Helpers of the image tests: pictures made offline, the two-profile setup."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image

from core.channel import IncomingMessage
from core.media import PreparedImage, prepare_image
from tests.fake_llm import FakeLLM


def png(width: int = 800, height: int = 600, color: str = "red", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, "PNG")
    return out.getvalue()


def picture(data: bytes | None = None) -> PreparedImage:
    """An image checked and re-encoded as a channel hands it over (800x600 by default)."""
    return prepare_image(data or png(), max_bytes=10_000_000, max_side=1568)


def photo(chat: str, text: str = "what is this?", **fields: Any) -> IncomingMessage:
    """A chatter's message with one picture."""
    return IncomingMessage(chat, text, user_id="5", images=(picture(),), **fields)


def two_profiles(text: FakeLLM, eyes: FakeLLM, *, vision: bool = True) -> str:
    """VIGIL_LLM_MODELS: ``text`` (no vision) and ``eyes`` (vision unless told)."""
    return json.dumps(
        {
            "text": {"base_url": text.url, "model": "t"},
            "eyes": {"base_url": eyes.url, "model": "e", "vision": vision},
        }
    )
