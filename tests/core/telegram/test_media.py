"""Telegram photos, image files and voice notes through the one chat pipeline.

Real uvicorn, real SQLite, real Pillow, FakeLLM over HTTP (a text profile and a
vision profile), and FakeTelegram delivering real Telethon media objects built
offline (``MessageMediaPhoto(Photo(PhotoSize ...))``, ``MessageMediaDocument``
with ``DocumentAttributeAudio(voice=True)`` ...) and serving their bytes.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from telethon import errors, types

from core.stt import FAILED_REPLY as STT_FAILED_REPLY
from core.telegram.bot import MEDIA_REPLY, STORAGE_REPLY
from core.telegram.media import UNAVAILABLE_REPLY, VOICE_OFF_REPLY
from tests.conftest import LiveServer
from tests.core.media.audio_files import ogg_opus, wav
from tests.core.telegram.test_app import BOB, GROUP, Tg, settle, tg_settings, wait_until
from tests.core.telegram.test_ledger import _crash_turns, deliver, ledger_rows, start
from tests.fake_llm import FakeLLM, default_reply, text_of
from tests.fake_telegram import FakeTelegram


def png(width: int = 800, height: int = 600, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def eyes() -> Iterator[FakeLLM]:
    with FakeLLM() as llm:
        llm.reply = lambda messages: "a red square"
        yield llm


def media_settings(tmp_path: Path, text: FakeLLM, eyes: FakeLLM | None, **overrides: Any) -> Any:
    profiles: dict[str, Any] = {"text": {"base_url": text.url, "model": "t"}}
    if eyes is not None:
        profiles["eyes"] = {"base_url": eyes.url, "model": "e", "vision": True}
        overrides.setdefault("llm_vision_model", "eyes")
    return tg_settings(
        tmp_path,
        text,
        llm_models=json.dumps(profiles),
        llm_default="text",
        telegram_call_timeout_s=1.0,
        **overrides,
    )


def start_tg(factory: Any, settings: Any) -> Tg:
    fake = FakeTelegram()
    return Tg(factory(settings, telegram=fake), fake)


@pytest.fixture
def tg(tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, live_server_factory: Any) -> Tg:
    return start_tg(live_server_factory, media_settings(tmp_path, fake_llm, eyes))


def stored(server: LiveServer) -> dict[str, Any]:
    """What the chat left behind: message rows, image rows, image files."""
    db = server.runtime.db
    media = server.settings.media_dir
    return {
        "messages": db.read_now("SELECT count(*) AS n FROM messages")[0]["n"],
        "images": db.read_now("SELECT count(*) AS n FROM message_images")[0]["n"],
        "files": sorted(p.name for p in media.rglob("*") if p.is_file()) if media.exists() else [],
    }


NOTHING = {"messages": 0, "images": 0, "files": []}


def ledger(server: LiveServer) -> list[str]:
    rows = server.runtime.db.read_now("SELECT status FROM telegram_inbound ORDER BY message_id")
    return [r["status"] for r in rows]


def jpeg_size(url: str) -> tuple[int, int]:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size


# --- images -----------------------------------------------------------------------


def test_a_photo_reaches_the_vision_model_with_its_caption(
    tg: Tg, fake_llm: FakeLLM, eyes: FakeLLM
) -> None:
    tg.say("what is this?", chat_id=42, media=tg.fake.photo(png(), width=800, height=600))
    assert tg.fake.texts(42) == ["a red square"]
    (url,) = eyes.image_urls()
    assert jpeg_size(url) == (800, 600)
    assert text_of(eyes.requests[-1]["messages"][-1]["content"]) == "what is this?"
    assert fake_llm.requests == []  # the text-only default never saw it
    (download,) = tg.fake.downloads
    assert download[1] == len(png())  # the full size ("y"), not the preview
    after = stored(tg.server)
    assert (after["messages"], after["images"], len(after["files"])) == (2, 1, 1)
    assert ledger(tg.server) == ["answered"]
    media = tg.status()["media"]
    assert media == {"turns": 1, "refused": 0, "downloads": 1, "downloaded_bytes": len(png())}


def test_an_image_sent_as_a_file_is_read_like_a_photo(tg: Tg, eyes: FakeLLM) -> None:
    attributes = [
        types.DocumentAttributeFilename(file_name="scan.png"),
        types.DocumentAttributeImageSize(w=640, h=480),
    ]
    media = tg.fake.document(png(640, 480, "blue"), mime="image/png", attributes=attributes)
    tg.say("", chat_id=42, media=media)  # no caption at all
    assert tg.fake.texts(42) == ["a red square"]
    assert jpeg_size(eyes.image_urls()[0]) == (640, 480)
    assert stored(tg.server)["images"] == 1


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("corrupt photo", "could not be read"),
        ("pdf as image/png", "not an image"),
        ("corrupt image file", "could not be read"),
    ],
)
def test_bad_images_get_a_polite_reply_and_nothing_is_stored(
    tg: Tg, fake_llm: FakeLLM, eyes: FakeLLM, kind: str, words: str
) -> None:
    fake = tg.fake
    media = {
        "corrupt photo": lambda: fake.photo(png()[:300]),
        "pdf as image/png": lambda: fake.document(b"%PDF-1.7 not a picture", mime="image/png"),
        "corrupt image file": lambda: fake.document(png()[:300], mime="image/png"),
    }[kind]()
    tg.say("look", chat_id=42, media=media)
    (reply,) = fake.texts(42)
    assert words in reply
    assert "Traceback" not in reply
    assert len(fake.downloads) == 1
    assert stored(tg.server) == NOTHING
    assert eyes.requests == [] and fake_llm.requests == []
    assert ledger(tg.server) == ["answered"]  # settled: told once, not retried
    media = tg.status()["media"]
    assert (media["turns"], media["refused"], media["downloads"]) == (0, 1, 1)


def test_an_oversized_image_is_refused_before_it_is_downloaded(
    tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, live_server_factory: Any
) -> None:
    settings = media_settings(tmp_path, fake_llm, eyes, max_image_bytes=50_000)
    tg = start_tg(live_server_factory, settings)
    tg.say("big", chat_id=42, media=tg.fake.photo(png(), declared=3_000_000))
    tg.say("big file", chat_id=42, media=tg.fake.document(png(), mime="image/png", declared=60_000))
    first, second = tg.fake.texts(42)
    assert "2.9 MB" in first and "smaller" in first
    assert "smaller" in second
    assert tg.fake.downloads == []
    assert not [c for c in tg.fake.calls if c[0] in ("download_media", "get_messages")]
    assert stored(tg.server) == NOTHING
    assert eyes.requests == []


def test_a_photo_that_cannot_be_stored_gets_the_storage_reply(
    tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, live_server_factory: Any
) -> None:
    settings = media_settings(tmp_path, fake_llm, eyes)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.media_dir.write_text("not a directory")  # data/media cannot hold images
    tg = start_tg(live_server_factory, settings)
    tg.say("what is this?", chat_id=42, media=tg.fake.photo(png()))
    assert tg.fake.texts(42) == [STORAGE_REPLY]
    assert eyes.requests == []
    db = tg.server.runtime.db
    assert db.read_now("SELECT count(*) AS n FROM messages")[0]["n"] == 0
    assert db.read_now("SELECT count(*) AS n FROM message_images")[0]["n"] == 0
    assert ledger(tg.server) == ["answered"]


def test_a_text_only_setup_says_it_cannot_see(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    tg = start_tg(live_server_factory, media_settings(tmp_path, fake_llm, None))
    tg.say("what is this?", chat_id=42, media=tg.fake.photo(png()))
    (reply,) = tg.fake.texts(42)
    assert reply.startswith("I can't look at images")
    assert fake_llm.requests == []
    assert tg.fake.downloads == []  # told before the photo was fetched
    assert stored(tg.server) == NOTHING
    assert ledger(tg.server) == ["answered"]


def test_other_media_get_the_polite_reply_without_a_download(tg: Tg, fake_llm: FakeLLM) -> None:
    sticker = tg.fake.document(
        png(),
        mime="image/webp",
        attributes=[types.DocumentAttributeSticker("", types.InputStickerSetEmpty())],
    )
    video = tg.fake.document(
        b"\x00" * 100, mime="video/mp4", attributes=[types.DocumentAttributeVideo(3, 10, 10)]
    )
    pdf = tg.fake.document(b"%PDF-1.7", mime="application/pdf")
    for media in (sticker, video, pdf, types.MessageMediaGeo(types.GeoPointEmpty())):
        tg.say("", chat_id=42, media=media)
    assert tg.fake.texts(42) == [MEDIA_REPLY] * 4
    assert "photos and voice notes" in MEDIA_REPLY
    assert tg.fake.downloads == [] and fake_llm.requests == []
    assert stored(tg.server) == NOTHING


def test_a_failed_or_hanging_download_gets_a_polite_reply(tg: Tg, eyes: FakeLLM) -> None:
    tg.fake.fail("download_media", errors.FileReferenceExpiredError(request=None))
    tg.say("one", chat_id=42, media=tg.fake.photo(png()))
    tg.fake.server.hang("download_media")
    tg.say("two", chat_id=42, media=tg.fake.photo(png()))  # cut off at the call deadline
    tg.fake.server.unhang()
    assert tg.fake.texts(42) == [UNAVAILABLE_REPLY.format(what="photo")] * 2
    assert eyes.requests == []
    assert stored(tg.server) == NOTHING
    assert ledger(tg.server) == ["answered", "answered"]
    tg.say("three", chat_id=42, media=tg.fake.photo(png()))  # and the next one works
    assert tg.fake.texts(42)[-1] == "a red square"


def test_in_a_group_only_an_addressed_photo_is_fetched(tg: Tg, eyes: FakeLLM) -> None:
    tg.say("our holiday", chat_id=GROUP, group=True, media=tg.fake.photo(png()))
    assert tg.fake.texts(GROUP) == [] and tg.fake.downloads == []
    tg.say("@VigilBot what is this?", chat_id=GROUP, group=True, media=tg.fake.photo(png()))
    assert tg.fake.texts(GROUP) == ["a red square"]
    assert text_of(eyes.requests[-1]["messages"][-1]["content"]) == "Ada: what is this?"
    assert len(tg.fake.downloads) == 1


def test_an_album_is_answered_photo_by_photo(tg: Tg, eyes: FakeLLM) -> None:
    tg.say("two views", chat_id=42, media=tg.fake.photo(png(color="red")), grouped_id=77)
    tg.say("", chat_id=42, media=tg.fake.photo(png(color="blue")), grouped_id=77)
    assert tg.fake.texts(42) == ["a red square", "a red square"]
    assert len(eyes.requests) == 2
    assert stored(tg.server)["images"] == 2


def test_a_photo_with_a_command_caption_runs_the_command(tg: Tg, eyes: FakeLLM) -> None:
    tg.say("/help", chat_id=42, media=tg.fake.photo(png()))
    assert tg.fake.texts(42)[0].startswith("I'm Vigil")
    assert tg.fake.downloads == [] and eyes.requests == []


# --- voice and audio, refused before the download -----------------------------------


def test_a_voice_note_without_speech_to_text_gets_a_polite_reply(tg: Tg, fake_llm: FakeLLM) -> None:
    tg.say("", chat_id=42, media=tg.fake.voice(b"OggS" + b"\x00" * 500, duration=4))
    assert tg.fake.texts(42) == [VOICE_OFF_REPLY]
    assert tg.fake.downloads == [] and fake_llm.requests == []
    assert stored(tg.server) == NOTHING
    assert ledger(tg.server) == ["answered"]


def test_a_voice_note_too_long_or_too_big_is_refused_before_download(
    tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, live_server_factory: Any
) -> None:
    settings = media_settings(
        tmp_path,
        fake_llm,
        eyes,
        stt_base_url="http://127.0.0.1:9/v1",
        max_voice_s=60,
        max_audio_bytes=100_000,
    )
    tg = start_tg(live_server_factory, settings)
    tg.say("", chat_id=42, media=tg.fake.voice(b"OggS" + b"\x00" * 500, duration=600))
    audio = types.DocumentAttributeAudio(duration=30, title="Song", performer="Band")
    tg.say(
        "",
        chat_id=42,
        media=tg.fake.document(b"ID3", mime="audio/mpeg", attributes=[audio], declared=200_000),
    )
    long_reply, big_reply = tg.fake.texts(42)
    assert "10:00 long" in long_reply and "1:00" in long_reply
    assert "audio file" in big_reply and "0.2 MB" in big_reply
    assert tg.fake.downloads == [] and fake_llm.requests == []
    assert stored(tg.server) == NOTHING


# --- exactly once across restarts ----------------------------------------------------


def restartable(tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM) -> Any:
    return media_settings(tmp_path, fake_llm, eyes, telegram_probe_timeout_s=0.3)


@pytest.mark.slow
def test_a_photo_replayed_after_a_restart_is_not_answered_twice(
    tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, live_server_factory: Any
) -> None:
    settings = restartable(tmp_path, fake_llm, eyes)
    fake = FakeTelegram()
    first = start(live_server_factory, settings, fake)
    deliver(first, fake, "what is this?", media=fake.photo(png()))
    first.call(settle)
    assert fake.texts(42) == ["a red square"]
    first.stop()
    fake.session.pts = 0  # Telegram replays every update
    second = start(live_server_factory, settings, fake)
    eyes.reply = default_reply  # the photo is in the context: the vision profile answers
    deliver(second, fake, "and now?")
    second.call(settle)
    assert fake.texts(42) == ["a red square", "echo: and now?"]
    assert len(fake.downloads) == 1 and len(eyes.requests) == 2
    assert stored(second)["images"] == 1
    assert second.client.get("/telegram/status").json()["chats"]["replayed_updates"] == 1


@pytest.mark.slow
def test_a_photo_cut_short_after_it_was_stored_is_answered_once_without_a_new_download(
    tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, live_server_factory: Any
) -> None:
    settings = restartable(tmp_path, fake_llm, eyes)
    fake = FakeTelegram()
    first = start(live_server_factory, settings, fake)
    eyes.stall_after_chunks, eyes.stall_s = 0, 2.0  # the model thinks...
    photo_id = deliver(first, fake, "what is this?", media=fake.photo(png()))
    wait_until(lambda: len(eyes.requests) == 1)
    first.call(_crash_turns)  # ...and the process dies in the middle of the turn
    assert stored(first)["images"] == 1
    assert ledger_rows(first) == [(42, photo_id, "pending")]
    first.stop()
    eyes.stall_after_chunks = None
    second = start(live_server_factory, settings, fake)
    wait_until(lambda: len(fake.texts(42)) == 1)
    second.call(settle)
    assert fake.texts(42) == ["a red square"]
    assert len(eyes.image_urls()) == 1  # the stored image went to the model again
    assert len(fake.downloads) == 1  # not fetched again
    after = stored(second)
    assert (after["messages"], after["images"], len(after["files"])) == (2, 1, 1)
    assert ledger_rows(second) == [(42, photo_id, "answered")]


@pytest.mark.slow
def test_a_pending_photo_not_yet_fetched_is_fetched_again_after_a_restart(
    tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, live_server_factory: Any
) -> None:
    settings = restartable(tmp_path, fake_llm, eyes)
    fake = FakeTelegram()
    first = start(live_server_factory, settings, fake)
    fake.server.hang("download_media")
    photo_id = deliver(first, fake, "what is this?", media=fake.photo(png()))
    wait_until(lambda: fake.server.hung_calls == 1)
    first.call(_crash_turns)
    assert stored(first) == NOTHING
    first.stop()
    fake.server.unhang()
    second = start(live_server_factory, settings, fake)
    wait_until(lambda: len(fake.texts(42)) == 1)
    second.call(settle)
    assert fake.texts(42) == ["a red square"]
    assert ("get_messages", (42, photo_id)) in fake.current.calls  # the media, from Telegram
    assert len(fake.downloads) == 1 and len(eyes.requests) == 1
    assert stored(second)["images"] == 1
    assert ledger_rows(second) == [(42, photo_id, "answered")]


# --- voice and audio, transcribed ----------------------------------------------------


@pytest.fixture
def stt() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        server.transcript = "what is the capital of France"
        yield server


@pytest.fixture
def vtg(
    tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, stt: FakeLLM, live_server_factory: Any
) -> Tg:
    settings = media_settings(tmp_path, fake_llm, eyes, stt_base_url=stt.url, max_voice_s=60)
    return start_tg(live_server_factory, settings)


def test_a_voice_note_is_transcribed_shown_and_answered(
    vtg: Tg, fake_llm: FakeLLM, stt: FakeLLM
) -> None:
    data = ogg_opus(3)
    vtg.say("", chat_id=42, media=vtg.fake.voice(data, duration=3))
    assert vtg.fake.texts(42) == [
        "\U0001f3a4 what is the capital of France",
        "echo: what is the capital of France",
    ]
    (request,) = stt.stt_requests
    assert (request.filename, request.content_type, request.data) == (
        "voice.ogg",
        "audio/ogg",
        data,
    )
    history = vtg.server.call(lambda rt: rt.memory.history("tg:42", role="user"))
    assert [t.content for t in history] == ["what is the capital of France"]
    assert stored(vtg.server)["images"] == 0
    assert ledger(vtg.server) == ["answered"]


def test_an_audio_file_keeps_its_name_and_its_caption_comes_first(
    vtg: Tg, fake_llm: FakeLLM, stt: FakeLLM
) -> None:
    attributes = [
        types.DocumentAttributeAudio(duration=2, title="Memo"),
        types.DocumentAttributeFilename(file_name="memo.wav"),
    ]
    media = vtg.fake.document(wav(2), mime="audio/x-wav", attributes=attributes)
    vtg.say("please summarize", chat_id=42, media=media)
    assert vtg.fake.texts(42)[-1] == "echo: please summarize\n\nwhat is the capital of France"
    assert stt.stt_requests[0].filename == "memo.wav"


def test_a_voice_note_longer_than_it_declared_is_refused_after_reading_it(
    vtg: Tg, fake_llm: FakeLLM, stt: FakeLLM
) -> None:
    vtg.say("", chat_id=42, media=vtg.fake.voice(ogg_opus(90), duration=5))
    (reply,) = vtg.fake.texts(42)
    assert "1:30 long" in reply
    assert len(vtg.fake.downloads) == 1  # it had to be read to be measured
    assert stt.stt_requests == [] and fake_llm.requests == []
    assert stored(vtg.server) == NOTHING


def test_a_failing_transcription_gets_a_polite_reply_and_nothing_is_stored(
    vtg: Tg, fake_llm: FakeLLM, stt: FakeLLM
) -> None:
    stt.stt_fail_times, stt.stt_fail_status = 1, 400
    vtg.say("", chat_id=42, media=vtg.fake.voice(ogg_opus(2), duration=2))
    (reply,) = vtg.fake.texts(42)
    assert reply == STT_FAILED_REPLY  # the server's words stay in the log
    assert fake_llm.requests == []
    assert stored(vtg.server) == NOTHING
    assert ledger(vtg.server) == ["answered"]


def test_a_chatter_over_the_rate_limit_is_refused_before_the_download(
    tmp_path: Path, fake_llm: FakeLLM, eyes: FakeLLM, live_server_factory: Any
) -> None:
    settings = media_settings(tmp_path, fake_llm, eyes, rate_limit_user_per_min=1)
    tg = start_tg(live_server_factory, settings)
    tg.say("hello", chat_id=43, sender=BOB)
    tg.say("and this?", chat_id=43, sender=BOB, media=tg.fake.photo(png()))
    first, second = tg.fake.texts(43)
    assert first == "echo: hello"
    assert "minute" in second or "try again" in second
    assert tg.fake.downloads == [] and eyes.requests == []
