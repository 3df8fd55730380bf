"""The voice step of a turn: a voice note becomes the text the turn answers.

Before the turn (:func:`check_voice`): no speech-to-text server configured is
``VoiceNotEnabled``; a bad or too long clip is ``BadAudio`` / ``AudioTooLong``
(``core.stt.check_audio``). Inside the turn, after admission, the rate limit
and the budget (:func:`transcribe_message`): the clip is transcribed, the
transcript is shown to the chatter as its own message ("🎤 ..."), and the
message continues as a text message. A failure (``TranscriptionFailed``, or
``NoSpeech`` for an empty transcript) leaves nothing stored. Each
transcription is a ``transcription`` usage row: no tokens, its latency and
the speech-to-text model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from core.channel import Channel, IncomingMessage
from core.errors import MediaError, NoSpeech, VigilError, VoiceNotEnabled
from core.stt import SpeechToText
from core.usage import CANCELLED, OK, CallMeter, UsageRecorder

log = logging.getLogger(__name__)

VOICE_NOT_ENABLED = (
    "Voice messages aren't enabled here, sorry: I can only read text. Please write your message."
)
NO_SPEECH = "I couldn't make out any words in that recording. Please try again, or write it."
TRANSCRIPT_MARK = "\U0001f3a4 "  # before the transcript the chatter sees
KIND = "transcription"  # the usage rows' kind


def check_voice(stt: SpeechToText | None, msg: IncomingMessage) -> None:
    """A voice note's checks before its turn (nothing stored, no server called)."""
    if msg.audio is None:
        return
    if stt is None:
        raise VoiceNotEnabled(VOICE_NOT_ENABLED)
    stt.check(msg.audio)


async def transcribe_message(
    stt: SpeechToText, msg: IncomingMessage, channel: Channel, usage: UsageRecorder
) -> tuple[IncomingMessage, str]:
    """``msg`` as a text message (caption, blank line, transcript) and the transcript."""
    assert msg.audio is not None
    meter = CallMeter(prompt_tokens=0, completion_tokens=0, model=stt.model)
    outcome = "error"
    try:
        heard = await stt.transcribe(msg.audio)
        outcome = OK
    except MediaError as exc:
        outcome = exc.code
        raise
    except asyncio.CancelledError:
        outcome = CANCELLED
        raise
    finally:
        usage.record(
            meter,
            chat_id=msg.chat_id,
            user_id=msg.user_id,
            kind=KIND,
            outcome=outcome,
            prompt_estimate=0,
            completion_text="",
        )
    transcript = _valid(" ".join(heard.text.split()))
    if not transcript:
        raise NoSpeech(NO_SPEECH)
    log.info(
        "chat %s: voice note transcribed in %.2f s (%d chars)",
        msg.chat_id,
        heard.elapsed_s,
        len(transcript),
    )
    await _show(channel, msg.chat_id, TRANSCRIPT_MARK + transcript)
    caption = msg.text.strip()
    text = f"{caption}\n\n{transcript}" if caption else transcript
    return replace(msg, text=text, audio=None), transcript


async def _show(channel: Channel, chat_id: str, shown: str) -> None:
    """The transcript as its own message, cut to fit one message of the channel."""
    limit = max(64, min(channel.max_message_chars, 4096) - 8)
    if len(shown) > limit:
        shown = shown[:limit] + "\u2026"
    with contextlib.suppress(VigilError):  # the answer matters more than the echo
        await channel.send(chat_id, shown)


def _valid(text: str) -> str:
    """Valid Unicode only (a server may send lone surrogates)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
