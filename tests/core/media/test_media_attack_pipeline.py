"""Images through ChatService under odd histories: hundreds of image turns, a
file gone from disk, /retry, /reset, no images in the context at all, a group,
turns folded into the summary. Real Pillow, SQLite and fake model servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.api import LocalReply
from core.channel import IncomingMessage
from core.media import MediaStore, StoredImage, image_tokens
from core.runtime import Runtime
from tests.conftest import make_settings
from tests.core.media.images import photo, picture, png, two_profiles
from tests.fake_llm import FakeLLM, text_of


def said(chat: str, text: str) -> IncomingMessage:
    return IncomingMessage(chat, text, user_id="5")


def user_contents(llm: FakeLLM) -> list[Any]:
    return [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "user"]


async def seed_image_turns(runtime: Runtime, chat: str, count: int) -> MediaStore:
    media = runtime.chat.media
    assert media is not None
    prepared = picture(png(color="blue"))
    for n in range(count):
        path = media.save(chat, prepared)
        caption = f"photo {n}"
        stored = StoredImage(path, prepared.width, prepared.height, caption, bytes=1)
        tokens = runtime.memory.estimate(caption) + image_tokens(prepared.width, prepared.height)
        await runtime.memory.append(chat, "user", caption, tokens=tokens, images=[stored])
        await runtime.memory.append(chat, "assistant", f"a blue picture ({n})")
    return media


async def test_five_hundred_image_turns_send_only_the_newest_images(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(tmp_path, llm_models=two_profiles(text, eyes), llm_default="eyes")
    runtime = await runtime_factory(settings)
    await seed_image_turns(runtime, "local:many", 500)
    result = await runtime.chat.handle(said("local:many", "and the last one?"), LocalReply())
    assert result.reply == "from eyes"
    # VIGIL_CONTEXT_MAX_IMAGES = 2 turns: the last photo's and this follow-up
    assert len(eyes.image_urls()) == 1
    contents = user_contents(eyes)
    assert contents[-1] == "and the last one?"
    sent = [c for c in contents if isinstance(c, list)]
    assert [text_of(c) for c in sent] == ["photo 499"]
    older = [c for c in contents[:-1] if isinstance(c, str)]
    assert older and all(c.endswith("]") and "[image: photo " in c for c in older)


async def test_older_image_turns_cost_their_placeholder_not_the_picture(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    # 40 image turns (about 800 tokens each as pictures, a few as text) fit a
    # 6000-token window as text: only the newest is a picture (with the question,
    # the two newest turns).
    text, eyes = pair
    settings = make_settings(
        tmp_path, llm_models=two_profiles(text, eyes), llm_default="eyes", context_max_tokens=6000
    )
    runtime = await runtime_factory(settings)
    await seed_image_turns(runtime, "local:w", 40)
    await runtime.chat.handle(said("local:w", "which did I send first?"), LocalReply())
    contents = user_contents(eyes)
    assert len(eyes.image_urls()) == 1
    assert contents[0] == "[image: photo 0]"  # nothing folded away


async def test_an_image_whose_file_is_gone_still_builds_a_prompt(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(
        tmp_path, llm_models=two_profiles(text, eyes), llm_default="text", llm_vision_model="eyes"
    )
    runtime = await runtime_factory(settings)
    await runtime.chat.handle(photo("local:gone", "my cat"), LocalReply())
    for path in settings.media_dir.rglob("*.jpg"):
        path.unlink()
    result = await runtime.chat.handle(said("local:gone", "what colour was it?"), LocalReply())
    assert result.reply == "from text"  # no picture left to see: the chat's own model
    assert user_contents(text) == ["[image: my cat]", "what colour was it?"]


async def test_retry_of_an_image_turn_shows_the_image_again(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(
        tmp_path, llm_models=two_profiles(text, eyes), llm_default="text", llm_vision_model="eyes"
    )
    runtime = await runtime_factory(settings)
    first = await runtime.chat.handle(photo("local:r"), LocalReply())
    assert first.model == "eyes"
    eyes.reply = lambda messages: "a red square"
    again = await runtime.chat.handle(said("local:r", "/retry"), LocalReply())
    assert again.reply == "a red square" and again.model == "eyes"
    assert not text.requests
    assert len(eyes.requests) == 2 and len(eyes.image_urls()) == len(eyes.image_urls(0)) == 1
    roles = [m["role"] for m in eyes.requests[-1]["messages"]]
    assert roles == ["system", "user"]  # the replaced answer is left out


async def test_reset_then_an_image_sends_only_the_new_one(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(tmp_path, llm_models=two_profiles(text, eyes), llm_default="eyes")
    runtime = await runtime_factory(settings)
    await runtime.chat.handle(photo("local:z", "first"), LocalReply())
    await runtime.chat.handle(said("local:z", "/reset"), LocalReply())
    before = len(eyes.requests)
    await runtime.chat.handle(photo("local:z", "second"), LocalReply())
    assert len(eyes.requests) == before + 1
    assert [text_of(c) for c in user_contents(eyes)] == ["second"]
    assert len(eyes.image_urls()) == len(eyes.image_urls(0)) == 1


async def test_a_group_image_names_its_author(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(tmp_path, llm_models=two_profiles(text, eyes), llm_default="eyes")
    runtime = await runtime_factory(settings)
    msg = photo("tg:-100", "look", is_group=True, display_name="Ann")
    await runtime.chat.handle(msg, LocalReply())
    (content,) = user_contents(eyes)
    assert text_of(content) == "Ann: look" and len(eyes.image_urls()) == 1
    (turn,) = await runtime.memory.history("tg:-100", role="user")
    assert turn.author == "Ann" and turn.images[0].caption == "look"


async def test_folded_image_turns_are_remembered_as_images(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    text, eyes = pair
    settings = make_settings(
        tmp_path, llm_models=two_profiles(text, eyes), llm_default="eyes", context_max_messages=4
    )
    runtime = await runtime_factory(settings)
    await runtime.chat.handle(photo("local:f", "What is this? Tell me."), LocalReply())
    for n in range(4):
        await runtime.chat.handle(said("local:f", f"more {n}"), LocalReply())
    window = await runtime.memory.window("local:f")
    first = window.live_summary.splitlines()[0]
    assert first.startswith("- user: What is this?") and "[image" in first
