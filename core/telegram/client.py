"""Telethon at the edge: building the client, pinning its server, translating errors.

With ``core/telegram/gateway.py`` (the gateway) and ``core/telegram/auth.py`` (login,
logout) one of the three modules that import Telethon; everything else sees
our own types and errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from telethon import TelegramClient, errors, types
from telethon import __version__ as telethon_version
from telethon.crypto import rsa as telethon_rsa
from telethon.tl.alltlobjects import LAYER

from core.config import Settings
from core.errors import ChannelError, RateLimited, VigilError
from core.telegram.channel import EntitiesRejected, MessageTooLong
from core.telegram.format import Entity
from core.telegram.rules import TgMedia, TgMessage
from core.telegram.session import ServerProfile, TelegramUnauthorized, prepare_session_file

# What a dead or broken connection raises (besides RPC errors, which are Telegram's answers).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    EOFError,  # asyncio.IncompleteReadError: the peer closed mid-packet
    errors.InvalidBufferError,
    errors.SecurityError,
    errors.TypeNotFoundError,
    errors.BadMessageError,
)


class TelegramIncompatible(ChannelError):
    """The server speaks another MTProto API layer than our Telethon."""

    code = "telegram_incompatible"


_ENTITY_TYPES: dict[str, Any] = {
    "bold": types.MessageEntityBold,
    "italic": types.MessageEntityItalic,
    "code": types.MessageEntityCode,
    "strike": types.MessageEntityStrike,
}


def make_client(settings: Settings, profile: ServerProfile) -> TelegramClient:
    """The real Telethon client on ``data/telegram.session`` (mode 0600)."""
    prepare_session_file(settings.session_path)
    api_hash = settings.telegram_api_hash.get_secret_value() if settings.telegram_api_hash else ""
    client = TelegramClient(
        str(settings.session_path),
        settings.telegram_api_id or 0,
        api_hash,
        flood_sleep_threshold=0,  # every flood wait comes to us as RateLimited
        request_retries=3,
        connection_retries=3,
        retry_delay=2,
        auto_reconnect=True,
        timeout=min(10, int(settings.telegram_call_timeout_s) or 1),  # per network request
        # Fetch what was missed while down (from the session's saved update
        # state) on every connect; the inbound ledger drops what was seen before.
        catch_up=True,
        base_logger="telethon",
    )
    client.parse_mode = None  # we always pass formatting entities ourselves
    return client


def apply_server(client: Any, profile: ServerProfile) -> None:
    """Before the first connect: register the server's key, pin the data centre.

    A session that already holds an auth key keeps its own DC (Telegram may
    have migrated it within that environment); the marker next to the
    session guarantees it was made for this server.
    """
    if profile.key_pem is not None:
        telethon_rsa.add_key(profile.key_pem, old=False)
    if profile.is_custom and client.session.auth_key is None:
        client.session.set_dc(profile.dc_id, profile.host, profile.port)


def to_tl_entities(entities: list[Entity]) -> list[Any]:
    out: list[Any] = []
    for e in entities:
        if e.kind == "pre":
            out.append(types.MessageEntityPre(e.offset, e.length, e.extra))
        elif e.kind == "text_url":
            out.append(types.MessageEntityTextUrl(e.offset, e.length, e.extra))
        elif e.kind in _ENTITY_TYPES:
            out.append(_ENTITY_TYPES[e.kind](e.offset, e.length))
    return out


async def incoming_message(
    event: Any,
    *,
    is_edit: bool,
    my_username: str,
    replies_to_me: Callable[[Any], Awaitable[bool]],
    now: float,
) -> TgMessage | None:
    """A Telethon NewMessage/MessageEdited event as our TgMessage (None: not for us)."""
    message = event.message
    if event.is_channel and not event.is_group:
        return None  # broadcast channels are not conversations
    sender = await event.get_sender()
    if getattr(sender, "bot", False):
        return None  # never talk to other bots (reply loops)
    text = message.message or ""  # a photo's or file's caption too
    media = media_of(message.media, group_id=getattr(message, "grouped_id", None))
    mentions = bool(getattr(message, "mentioned", False)) or (
        bool(my_username) and f"@{my_username.lower()}" in text.lower()
    )
    return TgMessage(
        chat_id=int(event.chat_id),
        message_id=int(message.id),
        text=text,
        sender_id=event.sender_id,
        username=getattr(sender, "username", None),
        display_name=_display_name(sender),
        is_private=bool(event.is_private),
        is_group=bool(event.is_group),
        mentions_me=mentions,
        replies_to_me=await replies_to_me(event) if event.is_group else False,
        has_media=media is not None,
        media=media,
        is_edit=is_edit,
        date=message.date.timestamp() if message.date else now,
    )


def media_of(media: Any, *, group_id: int | None = None) -> TgMedia | None:
    """What a message carries, as Telegram declared it (None: nothing, or a link preview)."""
    if media is None or isinstance(media, types.MessageMediaWebPage):
        return None
    if isinstance(media, types.MessageMediaPhoto):
        size = largest_photo_size(media.photo)
        if size is None:
            return TgMedia("other", group_id=group_id)  # gone (a self-destructed photo)
        return TgMedia(
            "photo",
            size=_photo_bytes(size),
            mime="image/jpeg",
            file_name="photo.jpg",
            width=size.w,
            height=size.h,
            group_id=group_id,
        )
    document = getattr(media, "document", None)
    if not isinstance(media, types.MessageMediaDocument) or not isinstance(
        document, types.Document
    ):
        return TgMedia("other", group_id=group_id)
    return _document_media(document, group_id)


def _document_media(document: Any, group_id: int | None) -> TgMedia:
    attrs = {type(a): a for a in document.attributes or ()}
    mime = (document.mime_type or "").lower()
    named = attrs.get(types.DocumentAttributeFilename)
    common: dict[str, Any] = {
        "size": int(document.size or 0),
        "mime": mime,
        "file_name": named.file_name if named is not None else "",
        "group_id": group_id,
    }
    audio = attrs.get(types.DocumentAttributeAudio)
    moving = (types.DocumentAttributeSticker, types.DocumentAttributeVideo)
    if any(kind in attrs for kind in (*moving, types.DocumentAttributeAnimated)):
        return TgMedia("other", **common)  # stickers, videos, round video notes, GIFs
    if audio is not None or mime.startswith("audio/"):
        voice = audio is not None and bool(audio.voice)
        duration = float(audio.duration) if audio is not None and audio.duration else None
        return TgMedia("voice" if voice else "audio", duration_s=duration, **common)
    if mime.startswith("image/"):
        dims = attrs.get(types.DocumentAttributeImageSize)
        width, height = (dims.w, dims.h) if dims is not None else (None, None)
        return TgMedia("image", width=width, height=height, **common)
    return TgMedia("other", **common)


def largest_photo_size(photo: Any) -> Any:
    """The biggest downloadable size of a photo (what a chatter sent), or None."""
    if not isinstance(photo, types.Photo):
        return None
    sizes = [s for s in photo.sizes if isinstance(s, (types.PhotoSize, types.PhotoSizeProgressive))]
    return max(sizes, key=_photo_bytes, default=None)


def _photo_bytes(size: Any) -> int:
    if isinstance(size, types.PhotoSizeProgressive):
        return int(max(size.sizes, default=0))
    return int(size.size)


def download_thumb(media: Any) -> str | None:
    """``thumb=`` for ``download_media``: a photo's largest image (never its video)."""
    if isinstance(media, types.MessageMediaPhoto):
        size = largest_photo_size(media.photo)
        return None if size is None else str(size.type)
    return None


def _display_name(sender: Any) -> str | None:
    if sender is None:
        return None
    parts = [getattr(sender, "first_name", None), getattr(sender, "last_name", None)]
    name = " ".join(p for p in parts if p) or getattr(sender, "title", None)
    return name or getattr(sender, "username", None)


def is_receiving_updates(client: Any) -> bool:
    """Telethon's update task is alive (it dies on some errors, leaving the socket open)."""
    handle = getattr(client, "_updates_handle", None)
    return handle is not None and not handle.done()


def translate(exc: BaseException) -> VigilError:
    """A Telethon (or network) error as one of ours; the original is the cause."""
    if isinstance(exc, errors.TypeNotFoundError):
        return TelegramIncompatible(
            f"the Telegram server speaks another protocol layer: it sent a type that "
            f"Telethon {telethon_version} (API layer {LAYER}) does not know"
        )
    if isinstance(exc, errors.FloodError):
        seconds = float(getattr(exc, "seconds", 0) or 5)
        return RateLimited(f"Telegram asked to wait {seconds:.0f} s", retry_after=seconds)
    if isinstance(exc, errors.UnauthorizedError):
        return TelegramUnauthorized(
            f"Telegram refused the session ({type(exc).__name__}); "
            "log in again with scripts/telegram_login.sh"
        )
    if isinstance(exc, errors.MessageTooLongError):
        return MessageTooLong("message too long for Telegram")
    if isinstance(exc, errors.BadRequestError) and type(exc).__name__.startswith("Entit"):
        return EntitiesRejected(f"Telegram rejected the formatting: {type(exc).__name__}")
    if isinstance(exc, errors.RPCError):
        return ChannelError(f"Telegram error {type(exc).__name__}", rpc=type(exc).__name__)
    return ChannelError(f"Telegram unreachable: {type(exc).__name__}: {exc}"[:300])
