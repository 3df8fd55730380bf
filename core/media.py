"""Images and audio that come with a message: checked, re-encoded, stored.

Every image a chatter sends is decoded with Pillow (so a file that only
claims to be an image, or one cut short, is refused with a clear reason),
turned upright, downscaled to ``VIGIL_IMAGE_MAX_SIDE_PX`` and re-encoded as
JPEG: what is stored and sent to a model is always a small, valid picture,
never the bytes as received. Images live under ``data/media/`` (directories
0700, files 0600), one file per image, named from the chat and a random id;
the ``message_images`` table refers to them.

Audio is not stored: a voice note is transcribed and its text is the message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import io
import logging
import math
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import (
    BadImage,
    CorruptImage,
    ImageTooLarge,
    NotAnImage,
    StorageError,
    StorageFull,
)

log = logging.getLogger(__name__)

MEDIA_DIR = "media"
IMAGE_MIME = "image/jpeg"
JPEG_QUALITY = 85
# Decoded size limit: a small file can claim a huge canvas (a decompression
# bomb). 64 megapixels is a 9000 x 7000 photo; larger is refused.
MAX_PIXELS = 64_000_000
_DATA_URL_RE = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[A-Za-z0-9=.+-]+)*;base64,", re.I)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image checked and re-encoded, ready to be stored with its message."""

    data: bytes  # JPEG
    width: int
    height: int
    source_bytes: int  # the size as received
    mime: str = IMAGE_MIME


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image of a stored message (``path`` is relative to ``data/media``)."""

    path: str
    width: int
    height: int
    caption: str = ""
    mime: str = IMAGE_MIME
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class AudioClip:
    """A voice note or audio file as received, to be transcribed (never stored)."""

    data: bytes
    filename: str = "voice.ogg"
    mime: str = "audio/ogg"
    duration_s: float | None = None  # as the sender declared it (Telegram does)


def prepare_image(data: bytes, *, max_bytes: int, max_side: int) -> PreparedImage:
    """Check and re-encode one image; raises a :class:`BadImage` naming the problem."""
    size = len(data)
    if size > max_bytes:
        raise ImageTooLarge(
            f"the image is {_mb(size)}; the limit is {_mb(max_bytes)} (VIGIL_MAX_IMAGE_BYTES)",
            bytes=size,
            limit=max_bytes,
        )
    if size == 0:
        raise NotAnImage("the image is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as opened:
                kind = opened.format or "?"
                if opened.width * opened.height > MAX_PIXELS:
                    raise ImageTooLarge(
                        f"the image is {opened.width}x{opened.height} pixels; at most "
                        f"{MAX_PIXELS // 1_000_000} megapixels are read",
                        width=opened.width,
                        height=opened.height,
                    )
                opened.draft("RGB", (max_side, max_side))  # JPEG: decode at a smaller scale
                opened.load()
                image = _upright_rgb(opened)
        except UnidentifiedImageError:
            raise NotAnImage(
                "that file is not an image (JPEG, PNG, WebP, GIF, BMP or TIFF expected)"
            ) from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ImageTooLarge("the image's canvas is too large to read safely") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptImage(
                f"the {kind} image could not be read (damaged or cut short: {_short(exc)})"
            ) from None
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return PreparedImage(out.getvalue(), image.width, image.height, size)


def _upright_rgb(image: Image.Image) -> Image.Image:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # an animation: its first frame
    upright = ImageOps.exif_transpose(image) or image
    if upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    ):
        rgba = upright.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return upright.convert("RGB")


def decode_data_url(url: str, *, max_bytes: int) -> bytes:
    """The bytes of ``data:image/...;base64,...``; raises BadImage naming the problem."""
    if not isinstance(url, str):
        raise BadImage("each image must be a string: data:image/...;base64,...")
    match = _DATA_URL_RE.match(url[:200])
    if match is None:
        raise BadImage(
            "each image must be a data URL: data:image/jpeg;base64,... (or image/png, ...)"
        )
    payload = url[match.end() :]
    # base64 is 4 characters per 3 bytes: refuse what cannot fit before decoding it.
    if len(payload) > 4 * math.ceil(max_bytes / 3) + 4:
        raise ImageTooLarge(
            f"the image is larger than {_mb(max_bytes)} (VIGIL_MAX_IMAGE_BYTES)",
            limit=max_bytes,
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("the image's base64 data is not valid") from None


def data_url(data: bytes, mime: str = IMAGE_MIME) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def image_tokens(width: int, height: int) -> int:
    """What an image costs a model, estimated (OpenAI's tiles of 512 px, high detail)."""
    scale = min(1.0, 2048 / max(width, height, 1))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / max(min(w, h), 1))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def image_placeholder(image: StoredImage) -> str:
    """How an image no longer sent to the model appears in the context."""
    caption = " ".join(image.caption.split())[:120]
    return f"[image: {caption}]" if caption else f"[image: {image.width}x{image.height}]"


class MediaStore:
    """The image files under ``data/media``: written 0600, read back, removed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, relative: str) -> Path:
        """The file of a stored image; refuses anything that would leave the store."""
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"not a media path: {relative!r}")
        return path

    def save(self, chat_id: str, image: PreparedImage) -> str:
        """Write the image (fsynced, 0600); returns its path relative to the store.

        Raises ours, not the OS's: ``StorageFull`` when the disk (or quota) is full,
        ``StorageError`` otherwise; nothing is left behind either way.
        """
        try:
            return self._write(chat_id, image)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(
                    "storing the image: the disk is full; free space in the data directory"
                ) from exc
            raise StorageError(f"storing the image: {exc.strerror or exc}") from exc

    def _write(self, chat_id: str, image: PreparedImage) -> str:
        relative = f"{folder_of(chat_id)}/{secrets.token_hex(12)}.jpg"
        target = self.root / relative
        _mkdir_private(target.parent)
        tmp = target.with_suffix(".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(image.data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return relative

    def read(self, relative: str) -> bytes | None:
        """The image's bytes; None when the file is gone (deleted, or not restored)."""
        try:
            return self.path_of(relative).read_bytes()
        except (OSError, ValueError):
            return None

    def remove(self, relatives: Iterable[str]) -> int:
        """Delete these files (missing ones are fine); returns how many were removed."""
        removed = 0
        for relative in relatives:
            try:
                self.path_of(relative).unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                log.warning("media file %s could not be removed: %s", relative, exc)
        return removed

    def files(self) -> Iterator[str]:
        """Every stored image file, relative to the store."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*.jpg")):
            yield path.relative_to(self.root).as_posix()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def folder_of(chat_id: str) -> str:
    """The folder (under ``data/media``) that holds a chat's images."""
    return hashlib.sha256(chat_id.encode()).hexdigest()[:16]


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:120]
