"""Images through the chat pipeline: checked, stored 0600 with the message, sent
as content parts to a model that sees, older ones as text, nothing half-stored.

Real Pillow, real SQLite, real fake model servers (HTTP/SSE).
"""

from __future__ import annotations

import base64
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.api import LocalReply
from core.channel import IncomingMessage
from core.errors import CorruptImage, ImageTooLarge, NotAnImage, NoVisionModel
from core.media import prepare_image
from tests.conftest import make_settings
from tests.core.media.images import photo, png, two_profiles
from tests.fake_llm import FakeLLM, text_of

# --- prepare_image -------------------------------------------------------------------


def test_prepare_reencodes_downscales_and_flattens() -> None:
    image = prepare_image(png(4000, 3000, mode="RGBA"), max_bytes=10_000_000, max_side=1568)
    assert (image.width, image.height) == (1568, 1176)
    assert image.data[:3] == b"\xff\xd8\xff"  # JPEG
    assert Image.open(io.BytesIO(image.data)).mode == "RGB"


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"%PDF-1.7 not a picture", NotAnImage, "not an image"),
        (png()[:200], CorruptImage, "could not be read"),
        (b"", NotAnImage, "empty"),
    ],
)
def test_prepare_refuses_bad_files_with_a_reason(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error) as caught:
        prepare_image(data, max_bytes=10_000_000, max_side=1568)
    assert words in caught.value.message


def test_prepare_refuses_an_oversized_file_before_decoding() -> None:
    with pytest.raises(ImageTooLarge) as caught:
        prepare_image(png(), max_bytes=1024, max_side=1568)
    assert "VIGIL_MAX_IMAGE_BYTES" in caught.value.message and caught.value.status == 413


def test_prepare_refuses_a_decompression_bomb() -> None:
    out = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(out, "PNG")  # a tiny file, 144 megapixels
    assert len(out.getvalue()) < 100_000
    with pytest.raises(ImageTooLarge):
        prepare_image(out.getvalue(), max_bytes=10_000_000, max_side=1568)


# --- the pipeline --------------------------------------------------------------------


async def test_an_image_goes_to_the_vision_profile_and_is_stored_0600(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(
        tmp_path, llm_models=two_profiles(text, eyes), llm_default="text", llm_vision_model="eyes"
    )
    runtime = await runtime_factory(settings)
    result = await runtime.chat.handle(photo("local:p"), LocalReply())
    assert result.reply == "from eyes" and result.model == "eyes"
    assert not text.requests  # the text-only default never saw it
    url = eyes.image_urls()[0]
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (800, 600)
    assert text_of(eyes.requests[-1]["messages"][-1]["content"]) == "what is this?"
    (turn,) = await runtime.memory.history("local:p", role="user")
    (stored,) = turn.images
    path = settings.media_dir / stored.path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


async def test_only_the_newest_image_turns_are_sent_older_become_text(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(
        tmp_path, llm_models=two_profiles(text, eyes), llm_default="eyes", context_max_images=2
    )
    runtime = await runtime_factory(settings)
    for n in range(3):
        await runtime.chat.handle(photo("local:p", f"picture {n}"), LocalReply())
    assert len(eyes.image_urls()) == 2  # pictures 1 and 2: the newest two turns
    first_user = next(m for m in eyes.requests[-1]["messages"] if m["role"] == "user")
    assert first_user["content"] == "[image: picture 0]"
    await runtime.chat.handle(IncomingMessage("local:p", "and now?", user_id="5"), LocalReply())
    assert len(eyes.image_urls()) == 1  # picture 2 and the follow-up


async def test_a_follow_up_still_sees_the_picture_then_the_chat_model_answers_again(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(
        tmp_path,
        llm_models=two_profiles(text, eyes, vision=False),
        llm_default="text",
        llm_vision_model="eyes",
    )
    runtime = await runtime_factory(settings)
    said = [await runtime.chat.handle(IncomingMessage("local:p", "hi", user_id="5"), LocalReply())]
    said.append(await runtime.chat.handle(photo("local:p", "what is this?"), LocalReply()))
    for words in ("what colour is it?", "thanks, and what is 2+2?"):
        said.append(
            await runtime.chat.handle(IncomingMessage("local:p", words, user_id="5"), LocalReply())
        )
    assert [r.model for r in said] == ["text", "eyes", "eyes", "text"]
    assert len(eyes.image_urls()) == 1  # the follow-up carried the picture
    contents = [m["content"] for m in text.requests[-1]["messages"]]
    assert "[image: what is this?]" in contents  # now text for the text model


async def test_an_image_for_a_text_only_setup_is_refused_and_nothing_is_stored(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(
        tmp_path, llm_models=two_profiles(text, eyes, vision=False), llm_default="text"
    )
    runtime = await runtime_factory(settings)
    with pytest.raises(NoVisionModel) as caught:
        await runtime.chat.handle(photo("local:p"), LocalReply())
    assert caught.value.message.endswith("please describe it in words.")
    assert not text.requests and not eyes.requests
    assert not list(settings.media_dir.rglob("*.jpg"))
    assert await runtime.db.scalar("SELECT count(*) FROM messages") == 0


async def test_a_vision_profile_the_chat_does_not_use_is_named_in_the_refusal(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(tmp_path, llm_models=two_profiles(text, eyes), llm_default="text")
    runtime = await runtime_factory(settings)
    with pytest.raises(NoVisionModel) as caught:
        await runtime.chat.handle(photo("local:p"), LocalReply())
    assert caught.value.message.endswith("Send /model eyes to switch to one that can.")
    await runtime.chat.handle(IncomingMessage("local:p", "/model eyes", user_id="5"), LocalReply())
    result = await runtime.chat.handle(photo("local:p"), LocalReply())
    assert result.model == "eyes" and len(eyes.image_urls()) == 1
    assert await runtime.db.scalar("SELECT count(*) FROM message_images") == 1


async def test_a_failed_store_leaves_no_file(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(tmp_path, llm_models=two_profiles(text, eyes), llm_default="eyes")
    runtime = await runtime_factory(settings)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    runtime.memory.append = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await runtime.chat.handle(photo("local:p"), LocalReply())
    assert not list(settings.media_dir.rglob("*.jpg"))


def test_an_image_as_text_names_its_caption_once() -> None:
    from core.media import StoredImage, image_text

    photo_ = StoredImage("a/b.jpg", 800, 600, caption="what is this?")
    bare = StoredImage("a/c.jpg", 640, 480)
    assert image_text("what is this?", [photo_]) == "[image: what is this?]"
    assert image_text("what is this?", [photo_, photo_]) == "[2 images: what is this?]"
    assert image_text("", [bare]) == "[image: 640x480]"
    long = "x" * 300
    cut = StoredImage("a/d.jpg", 10, 10, caption=long[:200])
    assert image_text(long, [cut]) == long + " [image]"  # the words are kept
    assert image_text("hello", []) == "hello"


async def test_no_image_is_taken_when_the_context_sends_none(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(
        tmp_path, llm_models=two_profiles(text, eyes), llm_default="eyes", context_max_images=0
    )
    runtime = await runtime_factory(settings)
    with pytest.raises(NoVisionModel) as caught:
        await runtime.chat.handle(photo("local:p"), LocalReply())
    assert caught.value.message.endswith("please describe it in words.")
    assert not eyes.requests and await runtime.db.scalar("SELECT count(*) FROM messages") == 0
