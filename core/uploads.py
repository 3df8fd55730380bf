"""A message posted to the local API, read from JSON or multipart/form-data.

``POST /api/chats/{chat_id}/messages`` takes either a JSON object (``text``,
``user``, ``stream``, ``images`` as data URLs) or a form (``text``, ``user``,
``stream``, ``image`` files, one ``audio`` file). Both become one
:class:`MessageForm` whose images are already checked and re-encoded
(``core.media.prepare_image``, in a thread): a bad one is refused with the
MediaError naming the problem before anything is stored.

The body of this one route may be tens of MB (BodyGuard lets it through
unbuffered, counting it): it is read here, under the :class:`UploadGate`, so
only a few such bodies are in memory at once however many clients send them.
Images in a small body are decoded under the same gate (a small file can hold
a large canvas).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from core.errors import (
    BadRequest,
    Busy,
    Draining,
    ImageTooLarge,
    InvalidMultipart,
    MediaError,
    TooManyImages,
    UnsupportedContentType,
)
from core.http import FASTAPI_BODY_PARSE_ERROR, max_body_bytes
from core.media import AudioClip, PreparedImage, decode_data_url, prepare_image_async

if TYPE_CHECKING:
    from core.admission import Admission
    from core.config import Settings

FORM_FIELDS = ("text", "image", "audio", "user", "stream")
# A urlencoded form is read too (text only): what an HTML form or curl -d sends.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off", ""})
# Uploads read and decoded at once; more wait (then 429). Each may hold its
# body, a decoded image and Pillow's canvas (measured: docs/api.md, "Memory").
UPLOAD_SLOTS = 2
# Large forms read (spooled to temporary files, up to the route's body limit each) at
# once, apart from the slots: a slow upload does not hold a slot, and the temporary
# disk stays bounded (8 x 56 MB with the defaults).
FORM_READERS = 8
UPLOAD_WAIT_S = 10.0
# A body that stalls (no byte for UPLOAD_IDLE_S) or takes longer than UPLOAD_READ_S
# in all is refused (408): two stalled uploads would otherwise hold both slots, and
# every image upload after them would wait 10 s for a 429, for as long as they stall.
UPLOAD_IDLE_S = 30.0
UPLOAD_READ_S = 300.0
# python-multipart logs a WARNING for each malformed body it is sent: an outsider's
# bad input, answered 400 here, is no warning for the operator.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


# The request body in the OpenAPI schema (the route reads it itself).
_TEXT = {"type": "string", "description": "may be empty when images or audio come with it"}
MESSAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "text": _TEXT,
                        "user": {"type": "string"},
                        "stream": {"type": "boolean"},
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "description": "data:image/...;base64,..."},
                        },
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "text": _TEXT,
                        "user": {"type": "string"},
                        "stream": {"type": "boolean"},
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "audio": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


class MessageIn(BaseModel):
    """The JSON form of a message."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    user: str | None = None
    stream: bool = False
    images: list[str] | None = None


@dataclass(frozen=True, slots=True)
class MessageForm:
    """A posted message, its images prepared; ``text`` may be empty with media."""

    text: str | None
    user: str | None = None
    stream: bool = False
    images: tuple[PreparedImage, ...] = ()
    audio: AudioClip | None = None


class UploadStalled(BadRequest):
    code = "upload_stalled"
    status = 408


class UploadGate:
    """At most ``slots`` large request bodies read and decoded at a time; a body
    read within ``idle_s`` between chunks and ``read_s`` in all."""

    def __init__(
        self,
        slots: int = UPLOAD_SLOTS,
        *,
        wait_s: float = UPLOAD_WAIT_S,
        idle_s: float = UPLOAD_IDLE_S,
        read_s: float = UPLOAD_READ_S,
        readers: int = FORM_READERS,
    ) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self.idle_s = idle_s
        self.read_s = read_s
        self.readers = readers
        self._free = asyncio.Semaphore(slots)
        self._reading = asyncio.Semaphore(readers)
        # The server's Admission (set by build_runtime): a body still being sent
        # when draining starts is answered 503 at once, instead of being cancelled
        # (with a traceback per upload) when the server stops.
        self.admission: Admission | None = None

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._hold(self._free, self.slots)

    def reader(self) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the ``readers`` large forms read at once."""
        return self._hold(self._reading, self.readers)

    @contextlib.asynccontextmanager
    async def _hold(self, semaphore: asyncio.Semaphore, count: int) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(semaphore.acquire(), self.wait_s)
        except TimeoutError:
            raise Busy(
                f"{count} uploads are being read already; send it again shortly",
                retry_after=5,
            ) from None
        try:
            yield
        finally:
            semaphore.release()


async def read_message(request: Request, settings: Settings, gate: UploadGate) -> MessageForm:
    """The posted message, JSON or multipart; raises a 4xx VigilError naming the problem."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    is_json = kind in ("", "application/json") or kind.endswith("+json")
    if not is_json and kind not in FORM_TYPES:
        raise UnsupportedContentType(
            f"Content-Type {kind!r} is not accepted: send application/json, or "
            "multipart/form-data with the parts text, image, audio, user, stream"
        )
    length = request.headers.get("content-length", "")
    is_small = length.isdigit() and int(length) <= max_body_bytes(settings.max_message_chars)
    # A large JSON body is held in memory while it is read: it holds a slot from the
    # start. A large form's files are spooled to disk past 1 MB: it is read under one
    # of the (more) readers, so a slow client holds no slot, and its files are read and
    # decoded under a slot; so are the images of a small JSON body (a small file can
    # hold a large canvas).
    is_held = is_json and not is_small
    decoding = None if is_held else gate
    request = Request(request.scope, _Deadline(request.receive, gate))
    if is_held:
        holding = gate.slot()
    elif is_small:
        holding = contextlib.nullcontext()
    else:
        holding = gate.reader()
    async with holding:
        try:
            if is_json:
                return await _read_json(request, settings, decoding)
            return await _read_multipart(request, settings, decoding)
        except ClientDisconnect:
            raise BadRequest("the client went away while sending the body") from None


class _Deadline:
    """``receive`` that refuses a body stalled for ``idle_s`` or read for over ``read_s``,
    and one still being sent when the server starts draining."""

    def __init__(self, receive: Receive, gate: UploadGate) -> None:
        self.receive = receive
        self.gate = gate
        self.ends_at = asyncio.get_running_loop().time() + gate.read_s

    async def __call__(self) -> Message:
        gate = self.gate
        left = self.ends_at - asyncio.get_running_loop().time()
        limit = max(0.0, min(gate.idle_s, left))
        admission = gate.admission
        if admission is None:
            try:
                return await asyncio.wait_for(self.receive(), limit)
            except TimeoutError:
                raise self._stalled(left) from None
        if admission.drain_started.is_set():
            raise _restarting(admission)
        received = asyncio.ensure_future(self.receive())
        stopping = asyncio.ensure_future(admission.drain_started.wait())
        try:
            done, _ = await asyncio.wait(
                {received, stopping}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        if received in done:
            return received.result()
        received.cancel()
        if stopping in done:
            raise _restarting(admission)
        raise self._stalled(left)

    def _stalled(self, left: float) -> UploadStalled:
        if left <= self.gate.idle_s:
            why = f"was not all sent within {self.gate.read_s:g} s"
        else:
            why = f"stalled: no byte came for {self.gate.idle_s:g} s"
        return UploadStalled(f"the request body {why}; send it again")


def _restarting(admission: Admission) -> Draining:
    return Draining(
        "Vigil is restarting: the upload was not finished; send it again in a moment",
        retry_after=admission.drain_retry_after,
        reason=admission.drain_reason,
    )


# --- JSON ----------------------------------------------------------------------------


def _invalid(kind: str, *loc: str | int, msg: str = "") -> Exception:
    """A validation problem in the shape FastAPI's own handler words (core/http.py)."""
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": msg}])


async def _read_json(
    request: Request, settings: Settings, decoding: UploadGate | None
) -> MessageForm:
    raw = bytearray()  # grown in place: a list of chunks joined would hold the body twice
    async for chunk in request.stream():
        raw += chunk
    if not raw.strip():
        raise _invalid("missing")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise _invalid("json_invalid") from None
    except ValueError:  # not UTF-8: answered as FastAPI's own parser was
        raise StarletteHTTPException(400, FASTAPI_BODY_PARSE_ERROR) from None
    del raw
    if not isinstance(data, dict):
        raise _invalid("model_attributes_type")
    try:
        body = MessageIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _invalid(first["type"], *first["loc"], msg=first["msg"]) from None
    urls = body.images or []
    del data
    _check_count(len(urls), settings)
    images = []
    async with _slot(decoding, bool(urls)):
        for index, url in enumerate(urls):
            with _naming(index, len(urls)):
                decoded = decode_data_url(url, max_bytes=settings.max_image_bytes)
                urls[index] = ""  # its memory goes as soon as it is decoded
                images.append(await _prepare(decoded, settings))
    return MessageForm(body.text, body.user, body.stream, tuple(images))


# --- multipart -----------------------------------------------------------------------


class _CloseWatch:
    """Whether a multipart body reached its close delimiter (``--BOUNDARY--``).

    python-multipart drops a last part that never ended without a word: a body cut
    short would be answered without its image (or as "text is required").
    """

    def __init__(self, receive: Receive, boundary: bytes) -> None:
        self.receive = receive
        self.delimiter = b"--" + boundary + b"--"
        self.closed = False
        self._tail = b""

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request" and not self.closed:
            data = self._tail + message.get("body", b"")
            self.closed = self.delimiter in data
            self._tail = data[1 - len(self.delimiter) :]
        return message


async def _read_multipart(
    request: Request, settings: Settings, decoding: UploadGate | None
) -> MessageForm:
    watch = None
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if boundary and request.headers["content-type"].lower().startswith("multipart/"):
        watch = _CloseWatch(request.receive, boundary)
        request = Request(request.scope, watch)
    try:
        form = await request.form(
            max_files=settings.max_images_per_message + 1,
            max_fields=len(FORM_FIELDS) * 2,
            max_part_size=12 * settings.max_message_chars + 1024,  # urlencoded: %XX per byte
        )
    except StarletteHTTPException as exc:  # python-multipart's complaint, as 400
        raise InvalidMultipart(f"the multipart body could not be read: {exc.detail}") from None
    except UnicodeDecodeError:
        raise InvalidMultipart("a form field is not valid UTF-8") from None
    if watch is not None and not watch.closed:
        await form.close()
        raise InvalidMultipart(
            "the multipart body ended before its closing boundary (an upload cut short?)"
        )
    try:
        parts: dict[str, list[Any]] = {}
        for key, value in form.multi_items():
            parts.setdefault(key, []).append(value)
        return await _form_message(parts, settings, decoding)
    finally:
        await form.close()


async def _form_message(
    parts: dict[str, list[Any]], settings: Settings, decoding: UploadGate | None
) -> MessageForm:
    for key in parts:
        if key not in FORM_FIELDS:
            raise _invalid("extra_forbidden", key)
    text = _field(parts, "text")
    user = _field(parts, "user")
    stream = _field(parts, "stream")
    if stream is not None and stream.strip().lower() not in TRUE_WORDS | FALSE_WORDS:
        raise _invalid("bool_parsing", "stream", msg="must be true or false")
    files = _files(parts, "image")
    audio_files = _files(parts, "audio")
    if len(audio_files) > 1:
        raise BadRequest("send one audio file per message", field="audio")
    if files and audio_files:
        raise BadRequest("send images or an audio file, not both in one message", field="audio")
    _check_count(len(files), settings)
    images = []
    audio = None
    async with _slot(decoding, bool(files or audio_files)):
        for index, upload in enumerate(files):
            with _naming(index, len(files)):
                images.append(await _prepare(await _read_image(upload, settings), settings))
        if audio_files:
            audio = await _read_audio(audio_files[0])
    is_stream = stream is not None and stream.strip().lower() in TRUE_WORDS
    return MessageForm(text, user, is_stream, tuple(images), audio)


def _field(parts: dict[str, list[Any]], name: str) -> str | None:
    values = parts.get(name, [])
    if len(values) > 1:
        raise _invalid("too_long", name, msg="must be given once")
    if values and not isinstance(values[0], str):
        raise _invalid("string_type", name, msg="must be a form field, not a file")
    return values[0] if values else None


def _files(parts: dict[str, list[Any]], name: str) -> list[UploadFile]:
    values = parts.get(name, [])
    if any(not isinstance(v, UploadFile) for v in values):
        raise _invalid("is_instance_of", name, msg="must be a file (a part with a filename)")
    return values


async def _read_image(upload: UploadFile, settings: Settings) -> bytes:
    limit = settings.max_image_bytes
    if upload.size is not None and upload.size > limit:  # refused before it is read
        raise ImageTooLarge(
            f"the image is {upload.size / 1_048_576:.1f} MB; the limit is "
            f"{limit / 1_048_576:.1f} MB (VIGIL_MAX_IMAGE_BYTES)",
            bytes=upload.size,
            limit=limit,
        )
    return await upload.read()


async def _read_audio(upload: UploadFile) -> AudioClip:
    data = await upload.read()
    filename = (upload.filename or "audio").replace("/", "_")[-100:] or "audio"
    mime = (upload.content_type or "application/octet-stream")[:100]
    return AudioClip(data, filename=filename, mime=mime)


# --- both ----------------------------------------------------------------------------


def _check_count(count: int, settings: Settings) -> None:
    limit = settings.max_images_per_message
    if count > limit:
        raise TooManyImages(
            f"{count} images in one message; the limit is {limit} (VIGIL_MAX_IMAGES_PER_MESSAGE)",
            limit=limit,
            images=count,
        )


def _slot(gate: UploadGate | None, is_needed: bool) -> contextlib.AbstractAsyncContextManager[None]:
    """The gate's slot for decoding images, unless this request holds one already."""
    return gate.slot() if gate is not None and is_needed else contextlib.nullcontext()


async def _prepare(data: bytes, settings: Settings) -> PreparedImage:
    return await prepare_image_async(
        data, max_bytes=settings.max_image_bytes, max_side=settings.image_max_side_px
    )


@contextlib.contextmanager
def _naming(index: int, count: int) -> Any:
    """A MediaError about one of several images says which one."""
    try:
        yield
    except MediaError as exc:
        exc.fields["image"] = index + 1
        if count > 1:
            exc.message = f"image {index + 1} of {count}: {exc.message}"
        raise
