"""Speech to text: voice notes and audio files checked, then transcribed.

``check_audio`` is the one check every channel runs on a clip before a turn
(size, readable, length), so a bad file is refused with nothing stored.
``SpeechToText`` is the only code that speaks HTTP to the transcription
server: any OpenAI-compatible ``POST {VIGIL_STT_BASE_URL}/audio/transcriptions``
(whisper.cpp server, speaches/faster-whisper, OpenAI). Its failures become
``TranscriptionFailed`` with a message fit for the chatter; the details (URL,
HTTP status, the server's own words with the API key masked) go to the log.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import mutagen

from core.errors import AudioTooLong, BadAudio
from core.media import AudioClip

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = "a voice note, or an OGG/Opus, MP3, M4A, WAV or FLAC file"


def check_audio(clip: AudioClip, settings: Settings) -> float:
    """The clip's length in seconds, checked; raises BadAudio / AudioTooLong.

    The size is checked first (``VIGIL_MAX_AUDIO_BYTES``), then the length:
    the longer of the declared length (Telegram sends one) and the one read
    from the file, so a clip cannot pass by declaring less than it holds. A
    clip whose length cannot be read is accepted only if its sender declared
    one (a format this check cannot read, such as WebM, from Telegram);
    otherwise it is refused naming the accepted formats. Limit:
    ``VIGIL_MAX_VOICE_S``. Pure CPU, a few ms: call it before the turn starts.
    """
    return check_audio_limits(
        clip, max_bytes=settings.max_audio_bytes, max_seconds=settings.max_voice_s
    )


def check_audio_limits(clip: AudioClip, *, max_bytes: int, max_seconds: float) -> float:
    """:func:`check_audio` with the limits as plain values."""
    size = len(clip.data)
    if size == 0:
        raise BadAudio(f"That audio file is empty. Please send {ACCEPTED_FORMATS}.")
    if size > max_bytes:
        raise AudioTooLong(
            f"That audio file is {_mb(size)}; I can take at most {_mb(max_bytes)} "
            "(VIGIL_MAX_AUDIO_BYTES).",
            bytes=size,
            limit_bytes=max_bytes,
        )
    measured = audio_duration(clip.data)
    declared = clip.duration_s if clip.duration_s and clip.duration_s > 0 else None
    if measured is None and declared is None:
        raise BadAudio(
            "I couldn't read the length of that audio file (not audio, an unknown format, "
            f"or damaged). Please send {ACCEPTED_FORMATS}."
        )
    length = max(x for x in (measured, declared) if x is not None)
    if length > max_seconds:
        raise AudioTooLong(
            f"That recording is {clock(length)} long; I transcribe up to "
            f"{clock(max_seconds)} (VIGIL_MAX_VOICE_S). Please send a shorter one.",
            duration_s=round(length, 1),
            limit_s=max_seconds,
        )
    return length


def audio_duration(data: bytes) -> float | None:
    """The length read from the file itself (mutagen); None when it cannot be read."""
    try:
        parsed = mutagen.File(io.BytesIO(data))
    except Exception:  # hostile bytes into a foreign parser: any error means "unreadable"
        return None
    length = getattr(getattr(parsed, "info", None), "length", None)
    if not isinstance(length, (int, float)) or not length > 0 or length != length:
        return None
    return float(length)


def clock(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; under a minute: ``"42 s"``."""
    whole = round(seconds)
    if whole < 60:
        return f"{max(whole, 1)} s"
    return f"{whole // 60}:{whole % 60:02d}"


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"
