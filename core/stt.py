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

import asyncio
import io
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import mutagen
from mutagen import FileType
from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.oggflac import OggFLAC
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE
from pydantic import SecretStr

from core.errors import AudioTooLong, BadAudio, TranscriptionFailed
from core.llm import display_url, retry_delay
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
    ``VIGIL_MAX_VOICE_S``. CPU only, well under a millisecond for a voice note
    (only the file's headers and last page are read): call it before the turn.
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
        parsed = mutagen.File(io.BytesIO(data), options=_likely_kinds(data[:12]))
    except Exception:  # hostile bytes into a foreign parser: any error means "unreadable"
        return None
    length = getattr(getattr(parsed, "info", None), "length", None)
    if not isinstance(length, (int, float)) or not length > 0 or length != length:
        return None
    return float(length)


def _likely_kinds(head: bytes) -> list[type[FileType]] | None:
    """The formats the first bytes point to (one parser instead of mutagen trying all
    twenty: a voice note's check takes ~0.1 ms, not ~0.5); None: let mutagen try all."""
    if head.startswith(b"OggS"):
        return [OggOpus, OggVorbis, OggFLAC]
    if head.startswith(b"RIFF"):
        return [WAVE]
    if head.startswith(b"fLaC"):
        return [FLAC]
    if head[4:8] == b"ftyp":
        return [MP4]
    if head.startswith(b"ID3") or head[:1] == b"\xff":
        return [MP3]
    return None


def clock(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; under a minute: ``"42 s"``."""
    whole = round(seconds)
    if whole < 60:
        return f"{max(whole, 1)} s"
    return f"{whole // 60}:{whole % 60:02d}"


def _mb(size: int) -> str:
    if size < 1_048_576:
        return f"{max(1, round(size / 1024))} KB"
    return f"{size / 1_048_576:.1f} MB"


# --- the transcription server ---------------------------------------------------------
RETRY_STATUSES = {429, 500, 502, 503, 504}
FAILED_REPLY = (
    "I couldn't transcribe that voice note right now; the operator has been told. "
    "Please try again in a minute, or write your message."
)
# A server known down is re-probed in the background at most this often.
REPROBE_GAP_S = 2.0
# A server that let a transcription time out is skipped this long (its probe may
# answer while its transcriptions hang: the probe alone does not bring it back).
TIMEOUT_HOLD_S = 30.0
EXTENSIONS = {
    "audio/ogg": ".ogg",
    "audio/opus": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/m4a": ".m4a",
    "audio/aac": ".m4a",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/webm": ".webm",
}


@dataclass(slots=True)
class STTStatus:
    """The last transcription's (or probe's) outcome, for ``/health``."""

    state: str = "unknown"  # unknown | ok | unreachable | error
    detail: str = ""  # Vigil's own words, never the server's
    checked_at: float = 0.0
    latency_ms: float | None = None
    code: str = ""


@dataclass(frozen=True, slots=True)
class Transcript:
    """What the server heard, and how long it took (seconds, all attempts)."""

    text: str
    elapsed_s: float


class SpeechToText:
    """An OpenAI-compatible ``/audio/transcriptions`` client; closed by the lifespan."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_seconds: float = 300.0,
        max_bytes: int = 25 * 1_048_576,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.display_url = display_url(self.base_url)
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_seconds = max_seconds  # VIGIL_MAX_VOICE_S
        self.max_bytes = max_bytes  # VIGIL_MAX_AUDIO_BYTES
        self._secret = ""
        headers = {"Accept": "application/json"}
        if api_key is not None and api_key.get_secret_value():
            self._secret = api_key.get_secret_value()
            headers["Authorization"] = f"Bearer {self._secret}"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers=headers,
            transport=transport,
        )
        self.status = STTStatus()
        self.requests = 0
        self.failures = 0
        self.retries = 0
        self.skipped = 0  # voice notes refused at once while the server is known down
        # The server is known down until this (monotonic) time: unreachable (a
        # failed connection or probe) until a probe reaches it; no answer in time
        # (reachable, but hung or swamped) for TIMEOUT_HOLD_S. Meanwhile voice
        # notes are told at once instead of each waiting VIGIL_STT_TIMEOUT_S, and
        # a background re-probe (one at a time, every REPROBE_GAP_S) finds it back.
        self.clock = clock
        self._down_until = 0.0
        self._probe: asyncio.Task[STTStatus] | None = None
        self._probed_at = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SpeechToText | None:
        """The configured client; None without ``VIGIL_STT_BASE_URL`` (voice disabled)."""
        if not settings.stt_base_url:
            return None
        options: dict[str, Any] = {
            "base_url": settings.stt_base_url,
            "model": settings.stt_model,
            "api_key": settings.stt_api_key,
            "timeout_s": settings.stt_timeout_s,
            "connect_timeout_s": settings.llm_connect_timeout_s,
            "max_seconds": settings.max_voice_s,
            "max_bytes": settings.max_audio_bytes,
        }
        options.update(overrides)
        return cls(**options)

    @property
    def down(self) -> bool:
        """Known down: voice notes are refused at once (see ``_down_until``)."""
        return self.clock() < self._down_until

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._client.aclose()

    def check(self, clip: AudioClip) -> float:
        """:func:`check_audio` with this client's limits."""
        return check_audio_limits(clip, max_bytes=self.max_bytes, max_seconds=self.max_seconds)

    async def transcribe(self, clip: AudioClip) -> Transcript:
        """The clip's text (stripped; may be empty); raises TranscriptionFailed."""
        started = time.monotonic()
        if self.down:
            self._reprobe()
            self.skipped += 1
            log.info("transcription at %s skipped: the server is known down", self.display_url)
            raise TranscriptionFailed(FAILED_REPLY, url=self.display_url, reason="known down")
        self.requests += 1
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.timeout_s + 1.0):  # a trickling server too
                    response = await self._post(clip)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt < self.max_retries:
                    attempt += 1
                    await self._backoff(attempt, None)
                    continue
                self._down_until = math.inf  # until a probe reaches it
                raise self._failed("unreachable", _reason(exc), started) from exc
            except (httpx.TimeoutException, TimeoutError) as exc:
                detail = f"no answer within {self.timeout_s:g} s (VIGIL_STT_TIMEOUT_S)"
                self._down_until = self.clock() + TIMEOUT_HOLD_S
                raise self._failed("error", detail, started) from exc
            except httpx.HTTPError as exc:
                raise self._failed("error", _reason(exc), started) from exc
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                attempt += 1
                await self._backoff(attempt, response)
                continue
            text = self._text_of(response, started)
            elapsed = time.monotonic() - started
            self.status = STTStatus("ok", "", time.time(), round(elapsed * 1000, 1))
            self._down_until = 0.0
            return Transcript(text, elapsed)

    def _reprobe(self) -> None:
        """One background probe at a time, at most every REPROBE_GAP_S."""
        if self._probe is not None and not self._probe.done():
            return
        now = self.clock()
        if now - self._probed_at < REPROBE_GAP_S:
            return
        self._probed_at = now
        self._probe = asyncio.ensure_future(self.probe())

    async def _post(self, clip: AudioClip) -> httpx.Response:
        files = {"file": (upload_name(clip), clip.data, clip.mime or "application/octet-stream")}
        data = {"model": self.model, "response_format": "json"}
        url = f"{self.base_url}/audio/transcriptions"
        return await self._client.post(url, files=files, data=data)

    def _text_of(self, response: httpx.Response, started: float) -> str:
        status = response.status_code
        body = response.content.decode("utf-8", "replace")
        if status >= 400:
            self._log_upstream(f"HTTP {status}", body)
            if status in (401, 403):
                detail = f"HTTP {status}: the API key was rejected; set VIGIL_STT_API_KEY"
            elif status == 404:
                detail = (
                    "HTTP 404: no /audio/transcriptions here; check VIGIL_STT_BASE_URL "
                    "(it ends in /v1) and VIGIL_STT_MODEL"
                )
            else:
                detail = f"HTTP {status}; the server's own text is in logs/system.log"
            raise self._failed("error", detail, started, http_status=status)
        if "json" not in response.headers.get("content-type", "") and not body.startswith("{"):
            return body.strip()  # a server that answers text/plain
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("text"), str):
            self._log_upstream("an answer without a 'text' field", body)
            raise self._failed("error", "an answer without a 'text' field", started)
        return str(parsed["text"]).strip()

    def _failed(
        self, state: str, detail: str, started: float, **fields: Any
    ) -> TranscriptionFailed:
        self.failures += 1
        self.status = STTStatus(state, detail, time.time(), None, TranscriptionFailed.code)
        log.warning(
            "transcription at %s failed after %.1f s: %s",
            self.display_url,
            time.monotonic() - started,
            detail,
        )
        return TranscriptionFailed(FAILED_REPLY, url=self.display_url, reason=detail, **fields)

    def _log_upstream(self, what: str, text: str) -> None:
        """The server's own words: logs only, the API key masked."""
        if self._secret:
            text = text.replace(self._secret, "***")
        log.warning("speech-to-text server at %s sent %s: %.300s", self.display_url, what, text)

    async def _backoff(self, attempt: int, response: httpx.Response | None) -> None:
        self.retries += 1
        delay = retry_delay(self.backoff_s, attempt, response)
        why = f"HTTP {response.status_code}" if response is not None else "not reachable"
        log.warning(
            "transcription at %s: %s (attempt %d), retrying in %.1f s",
            self.display_url,
            why,
            attempt,
            delay,
        )
        await asyncio.sleep(delay)

    # --- health -----------------------------------------------------------------------
    async def probe(self, *, timeout_s: float = 3.0) -> STTStatus:
        """Reachability: ``GET {base_url}/models`` (any answer but 5xx/401/403 is fine;
        whisper.cpp's server answers 404)."""
        started = time.monotonic()
        try:
            response = await self._client.get(f"{self.base_url}/models", timeout=timeout_s)
        except httpx.HTTPError as exc:
            self.status = STTStatus("unreachable", _reason(exc), time.time(), None, "stt_probe")
            self._down_until = math.inf
            return self.status
        if response.status_code in (401, 403):
            detail = f"HTTP {response.status_code}: the API key was rejected; set VIGIL_STT_API_KEY"
            self.status = STTStatus("error", detail, time.time(), None, "stt_probe")
        elif response.status_code >= 500:
            detail = f"HTTP {response.status_code}"
            self.status = STTStatus("error", detail, time.time(), None, "stt_probe")
        else:
            latency = round((time.monotonic() - started) * 1000, 1)
            self.status = STTStatus("ok", "", time.time(), latency)
            if self._down_until == math.inf:  # reachable again; a hung one keeps its hold
                self._down_until = 0.0
        return self.status

    def health(self) -> dict[str, Any]:
        """``/health`` ``checks.stt``."""
        status = self.status
        return {
            "status": status.state,
            "url": self.display_url,
            "model": self.model,
            "detail": status.detail,
            "code": status.code or None,
            "checked_at": status.checked_at or None,
            "latency_ms": status.latency_ms,
            "down": self.down,  # voice notes are refused at once until it answers
            "skipped": self.skipped,
        }


def stt_health(stt: SpeechToText | None) -> dict[str, Any]:
    """``checks.stt``: ``{"status": "disabled"}`` without a server configured."""
    return {"status": "disabled"} if stt is None else stt.health()


def upload_name(clip: AudioClip) -> str:
    """A file name with an extension (OpenAI tells formats by it), safe to send."""
    kept = "".join(c for c in clip.filename if c.isascii() and (c.isalnum() or c in "._-"))
    stem, dot, ext = kept[-64:].strip(".").rpartition(".")
    if not dot:  # no extension ("voice")
        stem, ext = ext, ""
    mime = (clip.mime or "").split(";")[0].strip().lower()
    return f"{stem or 'audio'}.{ext or EXTENSIONS.get(mime, '.ogg').lstrip('.')}"


def _reason(exc: BaseException) -> str:
    chain: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 5:
        chain.append(str(cause).lower())
        cause = cause.__cause__ or cause.__context__
    text = " ".join(chain)
    if "refused" in text or "errno 111" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection"
    return type(exc).__name__
