"""What the gateway reads from real Telethon media objects, and the checks made before
anything is downloaded. Pure: real Telethon types built offline, no network."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from telethon import types

from core.errors import AudioTooLong, ImageTooLarge, VoiceNotEnabled
from core.telegram.client import download_thumb, media_of
from core.telegram.ledger import _message, _payload
from core.telegram.media import MediaLimits, audio_name, refuse_early
from core.telegram.rules import TgMedia, TgMessage

NOW = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)


def document(mime: str, *attributes: object, size: int = 1000) -> types.MessageMediaDocument:
    doc = types.Document(
        id=1,
        access_hash=2,
        file_reference=b"",
        date=NOW,
        mime_type=mime,
        size=size,
        dc_id=2,
        attributes=list(attributes),
    )
    return types.MessageMediaDocument(document=doc)


def test_a_photo_is_described_by_its_largest_size_never_its_preview() -> None:
    photo = types.Photo(
        id=1,
        access_hash=2,
        file_reference=b"",
        date=NOW,
        dc_id=2,
        sizes=[
            types.PhotoStrippedSize(type="i", bytes=b"\x01\x02"),
            types.PhotoSize(type="m", w=320, h=240, size=9_000),
            types.PhotoSizeProgressive(type="y", w=1280, h=960, sizes=[10_000, 60_000, 120_000]),
        ],
    )
    media = types.MessageMediaPhoto(photo=photo)
    assert media_of(media, group_id=9) == TgMedia(
        "photo",
        size=120_000,
        mime="image/jpeg",
        file_name="photo.jpg",
        width=1280,
        height=960,
        group_id=9,
    )
    assert download_thumb(media) == "y"


@pytest.mark.parametrize(
    ("media", "kind"),
    [
        (None, None),
        (types.MessageMediaWebPage(types.WebPageEmpty(id=1)), None),  # a link preview is text
        (types.MessageMediaPhoto(), "other"),  # a self-destructed photo: nothing to fetch
        (document("audio/ogg", types.DocumentAttributeAudio(duration=7, voice=True)), "voice"),
        (document("audio/mpeg", types.DocumentAttributeAudio(duration=200, title="S")), "audio"),
        (document("audio/x-wav"), "audio"),  # sent as a plain file
        (document("image/png", types.DocumentAttributeImageSize(w=10, h=20)), "image"),
        (
            document(
                "image/webp",
                types.DocumentAttributeSticker("", types.InputStickerSetEmpty()),
                types.DocumentAttributeImageSize(w=512, h=512),
            ),
            "other",
        ),
        (document("video/mp4", types.DocumentAttributeVideo(3, 10, 10)), "other"),
        (document("image/gif", types.DocumentAttributeAnimated()), "other"),
        (document("application/pdf"), "other"),
        (types.MessageMediaGeo(types.GeoPointEmpty()), "other"),
    ],
)
def test_each_kind_of_media_is_told_apart(media: object, kind: str | None) -> None:
    described = media_of(media)
    assert (described.kind if described else None) == kind


def test_a_voice_note_carries_its_declared_length_and_mime() -> None:
    media = document("audio/ogg", types.DocumentAttributeAudio(duration=7, voice=True), size=4321)
    described = media_of(media)
    assert described is not None
    assert (described.size, described.mime, described.duration_s) == (4321, "audio/ogg", 7.0)
    assert audio_name(described) == "voice.ogg"
    named = media_of(document("audio/mpeg", types.DocumentAttributeFilename("a.mp3")))
    assert named is not None and audio_name(named) == "a.mp3"


def test_a_message_with_media_survives_the_ledger_as_json() -> None:
    msg = TgMessage(
        chat_id=42,
        message_id=7,
        text="caption",
        sender_id=42,
        has_media=True,
        media=TgMedia("voice", size=10, mime="audio/ogg", duration_s=3.0, group_id=5),
    )
    payload = _payload(msg)
    assert json.loads(payload)["media"]["kind"] == "voice"
    assert _message(payload) == msg
    old = json.loads(payload)
    del old["media"]  # a row stored before media were read
    assert _message(json.dumps(old)).media is None


LIMITS = MediaLimits(
    max_image_bytes=1_000_000, max_audio_bytes=500_000, max_voice_s=60, is_voice_enabled=True
)


@pytest.mark.parametrize(
    ("media", "limits", "error"),
    [
        (TgMedia("photo", size=1_000_001), LIMITS, ImageTooLarge),
        (TgMedia("image", size=2_000_000), LIMITS, ImageTooLarge),
        (TgMedia("voice", size=500_001, duration_s=5), LIMITS, AudioTooLong),
        (TgMedia("voice", size=10, duration_s=61), LIMITS, AudioTooLong),
        (TgMedia("audio", size=10, duration_s=5), MediaLimits(), VoiceNotEnabled),
    ],
)
def test_refused_before_download(media: TgMedia, limits: MediaLimits, error: type) -> None:
    with pytest.raises(error):
        refuse_early(media, limits)


def test_within_the_limits_nothing_is_refused_early() -> None:
    refuse_early(TgMedia("photo", size=1_000_000), LIMITS)
    refuse_early(TgMedia("voice", size=500_000, duration_s=60), LIMITS)
    refuse_early(TgMedia("image", size=0), LIMITS)  # unknown size: checked after the download
