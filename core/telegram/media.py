"""Photos, image files, voice notes and audio files from Telegram, made ready for a turn.

Telethon-free. The gateway describes a message's media (:class:`TgMedia`,
as Telegram declared it); here it is checked against the limits *before*
anything is downloaded (declared size, declared length, voice enabled at
all), then fetched through the gateway's one download method (bounded in
bytes and time), then turned into what ``ChatService`` takes: a
:class:`~core.media.PreparedImage` (checked and re-encoded by Pillow, off the
event loop) or an :class:`~core.media.AudioClip` (checked by
:func:`core.stt.check_audio_limits`). Every refusal is a
:class:`~core.errors.MediaError` whose ``message`` is said to the chatter.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from core.errors import AudioTooLong, ImageTooLarge, MediaError, VoiceNotEnabled
from core.media import AudioClip, PreparedImage, prepare_image_async
from core.stt import check_audio_limits, clock
from core.telegram.rules import TgMedia
from core.voice import VOICE_NOT_ENABLED

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)

OTHER_MEDIA_REPLY = (
    "I can read text, photos and voice notes, but not this kind of file — "
    "please send your question as a message."
)
VOICE_OFF_REPLY = VOICE_NOT_ENABLED  # said by ChatService too (the local API)
UNAVAILABLE_REPLY = "I couldn't fetch that {what} from Telegram; please send it again."
_WHAT = {"photo": "photo", "image": "image", "voice": "voice note", "audio": "audio file"}


class MediaUnavailable(MediaError):
    """Telegram did not hand over the file (gone, timed out, refused)."""

    code = "media_unavailable"


class MediaSource(Protocol):
    """The gateway's download call (errors already ours)."""

    async def download_media(self, chat_id: int, message_id: int, *, max_bytes: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """The limits a Telegram media message is checked against (from Settings)."""

    max_image_bytes: int = 10 * 1_048_576
    max_side_px: int = 1568
    max_audio_bytes: int = 25 * 1_048_576
    max_voice_s: float = 300.0
    is_voice_enabled: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(
            max_image_bytes=settings.max_image_bytes,
            max_side_px=settings.image_max_side_px,
            max_audio_bytes=settings.max_audio_bytes,
            max_voice_s=settings.max_voice_s,
            is_voice_enabled=bool(settings.stt_base_url),
        )

    def max_bytes(self, media: TgMedia) -> int:
        return self.max_image_bytes if media.is_image else self.max_audio_bytes


def what(media: TgMedia) -> str:
    """The media as a chatter would name it ("photo", "voice note")."""
    return _WHAT.get(media.kind, "file")


def too_large(media: TgMedia, size: int, limit: int) -> MediaError:
    """The refusal of a file over its byte limit (said before or after downloading)."""
    if media.is_image:
        return ImageTooLarge(
            f"That {what(media)} is {_mb(size)}; I can take images up to {_mb(limit)}. "
            "Please send a smaller one.",
            bytes=size,
            limit=limit,
        )
    return AudioTooLong(
        f"That {what(media)} is {_mb(size)}; I can take at most {_mb(limit)}. "
        "Please send a shorter one.",
        bytes=size,
        limit_bytes=limit,
    )


def refuse_early(media: TgMedia, limits: MediaLimits) -> None:
    """Raise the MediaError that needs no download: voice off, declared size or length."""
    if not media.is_readable:
        raise MediaError(OTHER_MEDIA_REPLY)
    if not media.is_image and not limits.is_voice_enabled:
        raise VoiceNotEnabled(VOICE_OFF_REPLY)
    limit = limits.max_bytes(media)
    if media.size > limit:
        raise too_large(media, media.size, limit)
    if not media.is_image and (media.duration_s or 0) > limits.max_voice_s:
        raise AudioTooLong(
            f"That recording is {clock(media.duration_s or 0)} long; I transcribe up to "
            f"{clock(limits.max_voice_s)} (VIGIL_MAX_VOICE_S). Please send a shorter one.",
            duration_s=media.duration_s,
            limit_s=limits.max_voice_s,
        )


async def fetch(
    source: MediaSource | None, chat_id: int, message_id: int, media: TgMedia, limits: MediaLimits
) -> tuple[tuple[PreparedImage, ...], AudioClip | None]:
    """The message's images or audio clip, checked; raises MediaError for the chatter."""
    refuse_early(media, limits)
    if source is None:
        raise MediaUnavailable(UNAVAILABLE_REPLY.format(what=what(media)))
    try:
        data = await source.download_media(chat_id, message_id, max_bytes=limits.max_bytes(media))
    except MediaError:
        raise
    except Exception as exc:  # Telegram failed (timeout, flood wait, gone): the chatter retries
        log.warning("chat %s: message %s: download failed: %s", chat_id, message_id, exc)
        raise MediaUnavailable(UNAVAILABLE_REPLY.format(what=what(media))) from None
    if media.is_image:
        image = await prepare_image_async(
            data, max_bytes=limits.max_image_bytes, max_side=limits.max_side_px
        )
        return (image,), None
    clip = AudioClip(data, audio_name(media), media.mime or "audio/ogg", media.duration_s)
    await asyncio.to_thread(
        check_audio_limits, clip, max_bytes=limits.max_audio_bytes, max_seconds=limits.max_voice_s
    )
    return (), clip


def audio_name(media: TgMedia) -> str:
    """A file name the transcription server can tell the format from."""
    if media.file_name:
        return media.file_name
    ext = {"audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/x-wav": "wav", "audio/wav": "wav"}
    return f"{media.kind}.{ext.get(media.mime, 'ogg')}"


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"
