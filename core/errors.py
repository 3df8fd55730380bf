"""Vigil's own error hierarchy.

Each error has a stable ``code`` (part of the API), an HTTP ``status`` and
optional fields; one exception handler in ``core/http.py`` turns any of them
into a JSON body ``{"error": {"code", "message", ...fields}}``. Foreign errors
(httpx, telethon, sqlite3) are translated into these at the edge.
"""

from __future__ import annotations

from typing import Any


class VigilError(Exception):
    """Base of every error Vigil raises on purpose."""

    code = "vigil_error"
    status = 500

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.fields}


class BadRequest(VigilError):
    code = "bad_request"
    status = 400


class InvalidChatId(BadRequest):
    code = "invalid_chat_id"


class InvalidUser(BadRequest):
    code = "invalid_user"


class EmptyText(BadRequest):
    code = "text_empty"


class TextTooLong(BadRequest):
    code = "text_too_long"
    status = 413


class TooManyImages(BadRequest):
    code = "too_many_images"
    status = 413


class InvalidMultipart(BadRequest):
    code = "invalid_multipart"


class UnsupportedContentType(BadRequest):
    code = "unsupported_content_type"
    status = 415


class NotFound(VigilError):
    code = "not_found"
    status = 404


class Unauthorized(VigilError):
    code = "unauthorized"
    status = 401


class Forbidden(VigilError):
    code = "forbidden"
    status = 403


class Busy(VigilError):
    """Too much work right now; carries ``retry_after`` seconds."""

    code = "busy"
    status = 429

    def __init__(self, message: str, *, retry_after: float, **fields: Any) -> None:
        super().__init__(message, retry_after=round(retry_after, 1), **fields)
        self.retry_after = retry_after


class Draining(Busy):
    """The server is restarting or stopping; new turns are refused."""

    code = "restarting"
    status = 503


class StorageError(VigilError):
    code = "storage_error"
    status = 503


class StorageFull(StorageError):
    code = "disk_full"


class StorageReadOnly(StorageError):
    code = "readonly"


class DatabaseReplaced(StorageError):
    """``system.db`` was deleted or replaced under the running server."""

    code = "database_replaced"


class LLMError(VigilError):
    """The language model could not answer; ``message`` is fit for a chatter."""

    code = "llm_error"
    status = 502


class LLMUnavailable(LLMError):
    code = "llm_unavailable"


class LLMTimeout(LLMError):
    code = "llm_timeout"
    status = 504


class LLMBadResponse(LLMError):
    code = "llm_bad_response"


class RateLimited(VigilError):
    """A remote (Telegram) asked us to wait ``retry_after`` seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: float, **fields: Any) -> None:
        super().__init__(message, retry_after=retry_after, **fields)
        self.retry_after = retry_after


class ChannelError(VigilError):
    """A channel (Telegram, local) failed to deliver; message is for logs."""

    code = "channel_error"
    status = 502


class UserLimitError(VigilError):
    """One chatter's own limit (token budget, rate limit); ``message`` is fit for them."""

    code = "user_limit"
    status = 429


class BudgetExceeded(UserLimitError):
    """A token budget is used up until ``resets_at`` (ISO 8601, the budget's zone)."""

    code = "budget_exceeded"


class UserRateLimited(UserLimitError):
    """Too many messages from one user this minute; carries ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, **fields: Any) -> None:
        super().__init__(message, retry_after=max(1, round(retry_after)), **fields)
        self.retry_after = retry_after


class MediaError(BadRequest):
    """A photo, image or voice note that cannot be used; ``message`` is fit for the chatter.

    Raised before anything of the message is stored: the chatter is told why,
    and may send it again (smaller, another file) without a half-stored turn.
    """

    code = "media_error"
    status = 422


class BadImage(MediaError):
    code = "bad_image"


class ImageTooLarge(BadImage):
    code = "image_too_large"
    status = 413


class NotAnImage(BadImage):
    code = "not_an_image"
    status = 415


class CorruptImage(BadImage):
    code = "corrupt_image"


class NoVisionModel(MediaError):
    """An image for a chat whose model cannot see, and no VIGIL_LLM_VISION_MODEL."""

    code = "no_vision_model"


class BadAudio(MediaError):
    code = "bad_audio"


class AudioTooLong(BadAudio):
    code = "audio_too_long"
    status = 413


class NoSpeech(BadAudio):
    """The transcription server heard no words in the recording."""

    code = "no_speech"


class VoiceNotEnabled(MediaError):
    """A voice note while no speech-to-text server is configured (VIGIL_STT_BASE_URL)."""

    code = "voice_not_enabled"


class TranscriptionFailed(MediaError):
    """The speech-to-text server failed; ``message`` is fit for the chatter."""

    code = "transcription_failed"
    status = 502
