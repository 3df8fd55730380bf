"""Voice notes through the chat pipeline: checked before the turn, transcribed by a
real (fake) speech-to-text server over HTTP, shown as "🎤 ...", stored as the
user's message and answered; every failure is a polite refusal with nothing stored.

Real SQLite, real HTTP (tests/fake_llm.py serves both the model and
``/v1/audio/transcriptions``), real audio files (tests/core/media/audio_files.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.api import LocalReply
from core.channel import IncomingMessage
from core.config import Settings
from core.errors import (
    AudioTooLong,
    BadAudio,
    BudgetExceeded,
    NoSpeech,
    TranscriptionFailed,
    UserRateLimited,
    VoiceNotEnabled,
)
from core.health import health_report
from core.media import AudioClip
from core.runtime import Runtime
from core.stt import FAILED_REPLY as STT_FAILED_REPLY
from core.stt import TIMEOUT_HOLD_S, check_audio, upload_name
from tests.conftest import make_settings
from tests.core.media.audio_files import flac, mp3, ogg_opus, wav
from tests.fake_llm import FakeLLM, dead_url, text_of

SECRET = "sk-stt-very-secret-0123456789"


@pytest.fixture
def servers() -> Iterator[tuple[FakeLLM, FakeLLM]]:
    with FakeLLM() as llm, FakeLLM() as stt:
        stt.transcript = "what is the capital of France"
        yield llm, stt


def voice_settings(tmp_path: Path, llm: FakeLLM, stt_url: str | None, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "llm_base_url": llm.url,
        "stt_base_url": stt_url,
        "stt_model": "whisper-test",
        "stt_api_key": SECRET,
        "stt_timeout_s": 5.0,
    }
    values.update(extra)
    return make_settings(tmp_path, **values)


def voice(
    chat: str = "local:v",
    data: bytes | None = None,
    *,
    caption: str = "",
    duration_s: float | None = None,
    external_id: str | None = None,
    user: str = "tg:5",
) -> IncomingMessage:
    clip = AudioClip(data if data is not None else ogg_opus(3.0), duration_s=duration_s)
    return IncomingMessage(chat, caption, user_id=user, audio=clip, external_id=external_id)


async def count(runtime: Runtime, sql: str = "SELECT count(*) FROM messages") -> int:
    return int(await runtime.db.scalar(sql))


# --- check_audio, before any turn -----------------------------------------------------


def test_check_audio_reads_lengths_and_takes_the_longer_of_declared_and_measured(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    assert check_audio(AudioClip(ogg_opus(7.5)), settings) == 7.5
    assert check_audio(AudioClip(wav(2.0), mime="audio/wav"), settings) == 2.0
    assert check_audio(AudioClip(flac(12.5), mime="audio/flac"), settings) == 12.5
    assert round(check_audio(AudioClip(mp3(10.0), mime="audio/mpeg"), settings)) == 10
    with pytest.raises(AudioTooLong):
        check_audio(AudioClip(mp3(301.0), mime="audio/mpeg"), settings)
    assert check_audio(AudioClip(ogg_opus(7.5), duration_s=9), settings) == 9
    assert check_audio(AudioClip(ogg_opus(7.5), duration_s=1), settings) == 7.5
    # A format the check cannot read, with a declared length: the server decides.
    assert check_audio(AudioClip(b"\x1aE\xdf\xa3 webm bytes", duration_s=4), settings) == 4


@pytest.mark.parametrize(
    ("filename", "mime", "sent"),
    [
        ("voice.ogg", "audio/ogg", "voice.ogg"),
        ("memo", "audio/mpeg", "memo.mp3"),
        ("", "audio/x-m4a", "audio.m4a"),
        ("../../etc/passwd", "audio/ogg", "etcpasswd.ogg"),
        ('a"b\r\n.wav', "audio/wav", "ab.wav"),
    ],
)
def test_the_file_name_sent_is_safe_and_has_an_extension(
    filename: str, mime: str, sent: str
) -> None:
    assert upload_name(AudioClip(b"", filename, mime)) == sent


# --- the happy path ------------------------------------------------------------------


async def test_a_voice_note_is_transcribed_shown_stored_and_answered(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    data = ogg_opus(4.0)
    reply = LocalReply()
    result = await runtime.chat.handle(voice(data=data), reply)
    assert reply.messages[0] == "\U0001f3a4 what is the capital of France"
    assert result.transcript == "what is the capital of France"
    assert result.reply == "echo: what is the capital of France"
    (question,) = await runtime.memory.history("local:v", role="user")
    assert question.content == "what is the capital of France"
    assert text_of(llm.requests[-1]["messages"][-1]["content"]) == question.content
    (received,) = stt.stt_requests
    assert received.model == "whisper-test" and received.data == data
    assert received.filename == "voice.ogg" and received.content_type == "audio/ogg"
    assert received.fields["response_format"] == "json"
    assert received.auth == f"Bearer {SECRET}"


async def test_a_caption_comes_first_then_the_transcript(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    # A caption is never a command: "/reset" here is text, and the note is answered.
    result = await runtime.chat.handle(voice(caption="/reset please"), LocalReply())
    assert result.command is None
    (question,) = await runtime.memory.history("local:v", role="user")
    assert question.content == "/reset please\n\nwhat is the capital of France"


async def test_a_wav_upload_is_sent_with_its_name_and_the_transcription_is_in_usage(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    clip = AudioClip(wav(2.0), filename="memo", mime="audio/wav")
    msg = IncomingMessage("local:v", "", user_id="tg:5", audio=clip)
    await runtime.chat.handle(msg, LocalReply())
    assert stt.stt_requests[-1].filename == "memo.wav"  # an extension, for OpenAI
    await runtime.chat.usage.flush(runtime.db)
    rows = await runtime.db.fetchall(
        "SELECT kind, model, prompt_tokens, completion_tokens, outcome, user_id FROM usage"
        " ORDER BY id"
    )
    assert tuple(rows[0]) == ("transcription", "whisper-test", 0, 0, "ok", "tg:5")
    assert [r["kind"] for r in rows] == ["transcription", "turn"]
    usage = await runtime.chat.handle(IncomingMessage("local:v", "/usage"), LocalReply())
    assert "token" in usage.reply.lower()  # /usage still reads the table


# --- refused before the turn: nothing stored ------------------------------------------


async def test_without_stt_a_voice_note_gets_a_polite_refusal_and_nothing_is_stored(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, _ = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, None))
    assert runtime.stt is None
    with pytest.raises(VoiceNotEnabled) as caught:
        await runtime.chat.handle(voice(), LocalReply())
    assert "aren't enabled" in caught.value.message
    with pytest.raises(VoiceNotEnabled):  # the stream path refuses before it opens
        await runtime.chat.admit_user(voice(), LocalReply())
    assert await count(runtime) == 0 and not llm.requests
    report = await health_report(runtime)
    assert report["checks"]["stt"] == {"status": "disabled"}


@pytest.mark.parametrize(
    ("clip", "words"),
    [
        (AudioClip(ogg_opus(301.0)), "5:01 long"),  # measured
        (AudioClip(ogg_opus(3.0), duration_s=420), "7:00 long"),  # declared
        (AudioClip(wav(400.0, rate=800)), "6:40 long"),
    ],
)
async def test_a_recording_over_the_limit_is_refused_naming_both_lengths(
    tmp_path: Path,
    servers: tuple[FakeLLM, FakeLLM],
    runtime_factory: Any,
    clip: AudioClip,
    words: str,
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    msg = IncomingMessage("local:v", "", user_id="tg:5", audio=clip)
    with pytest.raises(AudioTooLong) as caught:
        await runtime.chat.handle(msg, LocalReply())
    assert words in caught.value.message and "up to 5:00" in caught.value.message
    assert caught.value.status == 413 and caught.value.fields["limit_s"] == 300
    assert not stt.stt_requests and await count(runtime) == 0


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7 not a recording at all" * 20, wav(2.0)[:40], ogg_opus(3.0)[:100], b""],
    ids=["not-audio", "cut-wav", "cut-ogg", "empty"],
)
async def test_a_file_that_is_not_readable_audio_is_refused_naming_the_formats(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any, data: bytes
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    with pytest.raises(BadAudio) as caught:
        await runtime.chat.handle(voice(data=data), LocalReply())
    assert "OGG/Opus, MP3, M4A, WAV or FLAC" in caught.value.message
    assert caught.value.code == "bad_audio" and caught.value.status == 422
    assert not stt.stt_requests and await count(runtime) == 0


async def test_a_file_over_the_byte_limit_is_refused(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url, max_audio_bytes=4096))
    with pytest.raises(AudioTooLong) as caught:
        await runtime.chat.handle(voice(data=wav(2.0)), LocalReply())
    assert (
        "VIGIL_MAX_AUDIO_BYTES" in caught.value.message
        and "31 KB; I can take at most 4 KB" in caught.value.message
    )
    assert not stt.stt_requests and await count(runtime) == 0


# --- the transcription server fails: polite, nothing stored, then fine again -------------


async def test_a_failing_server_gets_retries_then_a_polite_reply_and_nothing_is_stored(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    stt.stt_fail_times, stt.stt_fail_status = -1, 500
    with pytest.raises(TranscriptionFailed) as caught:
        await runtime.chat.handle(voice(), LocalReply())
    assert caught.value.message.startswith("I couldn't transcribe that voice note")
    assert stt.url not in caught.value.message  # details are for the operator
    assert len(stt.stt_requests) == 3  # the first try and two retries
    assert await count(runtime) == 0 and not llm.requests
    report = await health_report(runtime)
    assert report["checks"]["stt"]["status"] == "error"
    assert not any("stt" in reason for reason in report["reasons"])
    stt.stt_fail_times = 0  # the server is back: the next voice note is answered
    result = await runtime.chat.handle(voice(), LocalReply())
    assert result.reply == "echo: what is the capital of France"
    assert (await health_report(runtime))["checks"]["stt"]["status"] == "ok"
    await runtime.chat.usage.flush(runtime.db)
    outcomes = await runtime.db.fetchall("SELECT outcome FROM usage WHERE kind = 'transcription'")
    assert [r["outcome"] for r in outcomes] == ["transcription_failed", "ok"]


async def test_a_rate_limited_server_is_retried_until_it_answers(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    stt.stt_fail_times, stt.stt_fail_status = 2, 429
    result = await runtime.chat.handle(voice(), LocalReply())
    assert result.transcript == "what is the capital of France"
    assert len(stt.stt_requests) == 3


async def test_an_unreachable_server_is_a_polite_reply(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, _ = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, dead_url()))
    with pytest.raises(TranscriptionFailed):
        await runtime.chat.handle(voice(), LocalReply())
    assert await count(runtime) == 0 and not llm.requests
    stt_check = (await health_report(runtime))["checks"]["stt"]
    assert stt_check["status"] == "unreachable" and stt_check["detail"] == "connection refused"


async def test_a_hung_server_times_out_and_the_chat_goes_on(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url, stt_timeout_s=0.5))
    stt.stt_delay_s = 3.0  # the server holds the request: a read timeout, not an error
    with pytest.raises(TranscriptionFailed) as caught:
        await runtime.chat.handle(voice(), LocalReply())
    assert "VIGIL_STT_TIMEOUT_S" in caught.value.fields["reason"]
    assert len(stt.stt_requests) == 1  # a timeout is not retried
    assert await count(runtime) == 0
    text = IncomingMessage("local:v", "hi", user_id="tg:5")
    result = await runtime.chat.handle(text, LocalReply())
    assert result.reply == "echo: hi"  # the chat's turn lock was released


async def test_a_hung_server_is_skipped_at_once_for_a_while_then_tried_again(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url, stt_timeout_s=0.5))
    client = runtime.chat.stt
    now = [1000.0]
    client.clock = lambda: now[0]
    stt.stt_delay_s = 3.0  # hung: the first voice note waits VIGIL_STT_TIMEOUT_S once
    with pytest.raises(TranscriptionFailed):
        await runtime.chat.handle(voice(), LocalReply())
    assert len(stt.stt_requests) == 1 and client.down
    with pytest.raises(TranscriptionFailed) as caught:  # the next one is told at once
        await runtime.chat.handle(voice(), LocalReply())
    assert caught.value.fields["reason"] == "known down"
    assert caught.value.message == STT_FAILED_REPLY
    assert len(stt.stt_requests) == 1  # nothing sent to the hung server
    await client.probe()  # its /models answers; its transcriptions still hang
    stt_check = (await health_report(runtime))["checks"]["stt"]
    assert stt_check["down"] is True and stt_check["skipped"] == 1
    assert await count(runtime) == 0
    now[0] += TIMEOUT_HOLD_S + 1  # the hold is over: the next voice note tries again
    stt.stt_delay_s = 0.0
    result = await runtime.chat.handle(voice(), LocalReply())
    assert result.transcript == "what is the capital of France" and not client.down


async def test_an_unreachable_server_is_skipped_until_a_probe_reaches_it(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, dead_url()))
    client = runtime.chat.stt
    with pytest.raises(TranscriptionFailed):
        await runtime.chat.handle(voice(), LocalReply())
    tried = client.requests
    with pytest.raises(TranscriptionFailed) as caught:
        await runtime.chat.handle(voice(), LocalReply())
    assert caught.value.fields["reason"] == "known down" and client.requests == tried
    client.base_url = stt.url  # the server is back where it was looked for
    await client.probe()
    assert not client.down
    result = await runtime.chat.handle(voice(), LocalReply())
    assert result.transcript == "what is the capital of France"


async def test_an_empty_transcript_is_a_polite_reply_and_nothing_is_stored(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    stt.transcript = "  \n "
    reply = LocalReply()
    with pytest.raises(NoSpeech) as caught:
        await runtime.chat.handle(voice(), reply)
    assert "couldn't make out any words" in caught.value.message
    assert reply.messages == [] and await count(runtime) == 0 and not llm.requests


async def test_the_api_key_never_reaches_logs_errors_or_health(
    tmp_path: Path,
    servers: tuple[FakeLLM, FakeLLM],
    runtime_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    stt.echo_auth = True  # the error body repeats the Authorization header
    stt.stt_fail_times = -1
    caplog.set_level(logging.DEBUG, logger="core")
    with pytest.raises(TranscriptionFailed) as caught:
        await runtime.chat.handle(voice(), LocalReply())
    assert stt.stt_requests[-1].auth == f"Bearer {SECRET}"
    assert "scripted failure; you sent Authorization: Bearer ***" in caplog.text
    report = await health_report(runtime)
    for text in (caplog.text, str(caught.value.to_dict()), str(report)):
        assert SECRET not in text


# --- one pipeline: budgets, rate limits, one turn per chat, exactly once -------------


async def test_a_user_over_budget_is_refused_before_transcription(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(
        voice_settings(tmp_path, llm, stt.url, budget_user_tokens_day=5)
    )
    await runtime.chat.handle(
        IncomingMessage("local:v", "spend my budget now", user_id="tg:5"), LocalReply()
    )
    with pytest.raises(BudgetExceeded):
        await runtime.chat.handle(voice(), LocalReply())
    assert not stt.stt_requests and await count(runtime) == 2


async def test_the_rate_limit_counts_voice_notes(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(
        voice_settings(tmp_path, llm, stt.url, rate_limit_user_per_min=1)
    )
    await runtime.chat.handle(voice(), LocalReply())
    with pytest.raises(UserRateLimited):
        await runtime.chat.handle(voice(), LocalReply())
    assert len(stt.stt_requests) == 1


async def test_a_transcription_holds_the_chats_turn(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    stt.stt_delay_s = 0.3
    spoken = asyncio.ensure_future(runtime.chat.handle(voice(), LocalReply()))
    while not stt.stt_requests:  # the voice note's turn is transcribing
        await asyncio.sleep(0.01)
    typed = asyncio.ensure_future(
        runtime.chat.handle(IncomingMessage("local:v", "typed later", user_id="tg:5"), LocalReply())
    )
    await asyncio.gather(spoken, typed)
    rows = await runtime.db.fetchall("SELECT content FROM messages WHERE role = 'user' ORDER BY id")
    assert [r["content"] for r in rows] == ["what is the capital of France", "typed later"]


async def test_a_redelivered_voice_note_is_answered_without_transcribing_again(
    tmp_path: Path, servers: tuple[FakeLLM, FakeLLM], runtime_factory: Any
) -> None:
    llm, stt = servers
    runtime = await runtime_factory(voice_settings(tmp_path, llm, stt.url))
    await runtime.chat.handle(voice(external_id="77"), LocalReply())
    stt.transcript = "something else entirely"
    again = await runtime.chat.handle(voice(external_id="77"), LocalReply())
    assert len(stt.stt_requests) == 1
    assert again.reply == "echo: what is the capital of France"
    assert await count(runtime, "SELECT count(*) FROM messages WHERE role = 'user'") == 1


# --- the key and the URL's password stay out of backups and `vigilctl config` ---------


def test_backups_without_secrets_and_config_drop_the_stt_key_and_url_password(
    tmp_path: Path,
) -> None:
    from core.backups.extras import redact_config, redact_env
    from core.cli.config_view import shown_value
    from core.config import ConfigError, load_settings

    env = redact_env(
        f"VIGIL_STT_API_KEY={SECRET}\nVIGIL_STT_BASE_URL=http://u:pw-77@h:8080/v1\nVIGIL_PORT=9\n"
    )
    toml = redact_config(
        f'stt_api_key = "{SECRET}"\nstt_base_url = "http://u:pw-77@h:8080/v1"\n', ".toml"
    )
    for text in (env, toml):
        assert SECRET not in text and "pw-77" not in text, text
        assert "VIGIL-SECRET-NOT-IN-BACKUP" in text
    (tmp_path / "restored.toml").write_text(toml)
    with pytest.raises(ConfigError, match="VIGIL_STT_API_KEY still holds the placeholder"):
        load_settings(config_file=tmp_path / "restored.toml", data_dir=tmp_path)
    settings = make_settings(tmp_path, stt_api_key=SECRET, stt_base_url="http://u:pw-77@h:8080/v1")
    shown = f"{shown_value(settings, 'stt_api_key')} {shown_value(settings, 'stt_base_url')}"
    assert SECRET not in shown and "pw-77" not in shown
