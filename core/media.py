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

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import io
import logging
import math
import os
import re
import secrets
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from core.errors import (
    BadImage,
    CorruptImage,
    ImageTooLarge,
    NotAnImage,
    StorageError,
    StorageFull,
    StorageReadOnly,
)

log = logging.getLogger(__name__)

MEDIA_DIR = "media"
IMAGE_MIME = "image/jpeg"
JPEG_QUALITY = 85
# What Pillow may decode. Everything else (EPS would run Ghostscript, PDF,
# JPEG 2000, ICO with a PNG inside, PSD, TGA, ...) is refused before a decoder
# runs. A JPEG with several pictures (MPO) is read as JPEG.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Size limits. A small file can claim a huge canvas (a decompression bomb), and
# decoding costs memory for every pixel: 4 bytes, plus copies while resizing
# (about 10 bytes a pixel in all; WebP's decoder keeps two more canvases, about
# 16). What is decoded at full size is limited to 12 megapixels (4000 x 3000;
# a 4K screenshot fits), a WebP to 6: at most about 150 MB and half a second
# of CPU per image. A baseline JPEG is decoded at 1/2, 1/4 or 1/8 of its size
# (libjpeg's scaling), so a camera photo of up to 64 megapixels is read; a
# progressive JPEG keeps all its coefficients in memory whatever the scale, so
# it counts at full size.
MAX_PIXELS = 64_000_000
MAX_DECODED_PIXELS = 12_000_000
MAX_WEBP_PIXELS = 6_000_000
# Pillow reads a file's headers in Python, one structure at a time: 10 MB of
# empty JPEG segments took 7 s of CPU, of PNG chunks 4 s, of GIF comment
# blocks 2 s and 460 MB. Real files have a few dozen (a PNG's data chunks:
# about one per 8-64 KB); more than these are refused before Pillow reads them.
MAX_JPEG_SEGMENTS = 1_000  # before the first scan
MAX_PNG_CHUNKS = 20_000
MAX_GIF_BLOCKS = 10_000  # extension blocks before the first frame
MAX_TIFF_TAGS = 1_000  # in the first directory (real files: a few dozen)
MAX_TIFF_STRIPS = 20_000  # strips or tiles (a 9 MB TIFF of 1 M strips: 6.6 s, 390 MB)
# Pillow decodes a run-length BMP in Python, pixel by pixel: a 14 KB BMP of
# 12 megapixels took 3 s of CPU. Such BMPs (rare) are read up to 1 megapixel.
MAX_RLE_BMP_PIXELS = 1_000_000
# A progressive JPEG is decoded once per scan: encoders write about 10; a file
# of thousands of tiny scans would take minutes of CPU.
MAX_JPEG_SCANS = 100
# One image is decoded at a time (each may take ~150 MB for a moment, and the
# warnings filter below is process-wide: two decodes at once would race on it).
_DECODERS = threading.BoundedSemaphore(1)
_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
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


# Decoding has its own thread: images wait for it there, not in asyncio's
# default pool, whose few workers other work (health checks, file reads) needs.
_DECODE_POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vigil-image")


async def prepare_image_async(data: bytes, *, max_bytes: int, max_side: int) -> PreparedImage:
    """:func:`prepare_image` on the decoding thread (one image at a time)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(prepare_image, data, max_bytes=max_bytes, max_side=max_side)
    return await loop.run_in_executor(_DECODE_POOL, call)


def prepare_image(data: bytes, *, max_bytes: int, max_side: int) -> PreparedImage:
    """Check and re-encode one image; raises a :class:`BadImage` naming the problem.

    CPU-bound (up to a few hundred ms for the largest accepted image): from
    async code use :func:`prepare_image_async`, never call it on the event loop.
    """
    size = len(data)
    if size > max_bytes:
        raise ImageTooLarge(
            f"the image is {_mb(size)}; the limit is {_mb(max_bytes)} (VIGIL_MAX_IMAGE_BYTES)",
            bytes=size,
            limit=max_bytes,
        )
    if size == 0:
        raise NotAnImage("the image is empty (0 bytes)")
    with _DECODERS, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a damaged file's many complaints
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        kind = "?"
        try:
            _count_structures(data)
            with Image.open(io.BytesIO(data), formats=FORMATS) as opened:
                kind = opened.format or "?"
                image = _decode(opened, data, max_side)
            image.info.clear()  # no comment, EXIF or ICC of the sender's is passed on
            out = io.BytesIO()
            image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        except BadImage:
            raise
        except UnidentifiedImageError:
            raise NotAnImage(
                "that file is not an image (JPEG, PNG, WebP, GIF, BMP or TIFF expected)"
            ) from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ImageTooLarge("the image's canvas is too large to read safely") from None
        except Exception as exc:  # Pillow's decoders raise many kinds on bad input
            log.info("a %s image could not be decoded: %s: %s", kind, type(exc).__name__, exc)
            named = f"the {kind} image" if kind != "?" else "the image"
            raise CorruptImage(
                f"{named} could not be read (damaged or cut short: {_short(exc)})"
            ) from None
    return PreparedImage(out.getvalue(), image.width, image.height, size)


def _too_large(width: int, height: int, limit: int, why: str = "") -> ImageTooLarge:
    return ImageTooLarge(
        f"the image is {width}x{height} pixels; at most {limit / 1_000_000:.1f} megapixels "
        f"are read{why}",
        width=width,
        height=height,
    )


def _decode(opened: ImageFile.ImageFile, data: bytes, max_side: int) -> Image.Image:
    """The first frame of an opened image, upright, at most max_side, RGB."""
    width, height = opened.size
    if width * height > MAX_PIXELS:
        raise _too_large(width, height, MAX_PIXELS)
    if opened.format in ("JPEG", "MPO"):
        buffered, scans = _jpeg_layout(data)
        if scans > MAX_JPEG_SCANS:
            raise CorruptImage(
                f"the JPEG image has {scans} scans; at most {MAX_JPEG_SCANS} are read"
            )
        if buffered and width * height > MAX_DECODED_PIXELS:
            raise _too_large(width, height, MAX_DECODED_PIXELS, " from a progressive JPEG")
        opened.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 of the size
    if opened.format == "TIFF":
        # libtiff decodes a tile whole, whatever the picture's size: a 64x64
        # TIFF of one 16384 px tile (0.8 MB of deflate) took 800 MB.
        tags = getattr(opened, "tag_v2", {})
        tile = (int(tags.get(322) or 0), int(tags.get(323) or 0))
        if tile[0] * tile[1] > MAX_DECODED_PIXELS:
            raise ImageTooLarge(
                f"the TIFF image is stored in tiles of {tile[0]}x{tile[1]} pixels; at most "
                f"{MAX_DECODED_PIXELS / 1_000_000:.1f} megapixels are read",
                width=width,
                height=height,
            )
    limit = MAX_WEBP_PIXELS if opened.format == "WEBP" else MAX_DECODED_PIXELS
    if opened.format == "BMP" and any(t.codec_name == "bmp_rle" for t in opened.tile):
        limit = MAX_RLE_BMP_PIXELS
    if opened.width * opened.height > limit:
        raise _too_large(width, height, limit)
    opened.load()  # the first frame of an animation
    try:  # read after load: Pillow turns a TIFF upright itself and drops its tag
        orientation = int(opened.getexif().get(_ORIENTATION, 1))
    except Exception:  # damaged EXIF: the picture itself may be fine
        orientation = 1
    image = _resamplable(opened)
    # Downscaled before anything else: converting, turning and flattening copy
    # the image, and a copy of the small one is cheap (the box is square, so
    # turning after is the same).
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    image = _eight_bit(image)
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
    if image.mode in ("RGBA", "LA"):
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        return flat
    return image.convert("RGB")


def _resamplable(image: Image.Image) -> Image.Image:
    """The image in a mode Pillow resizes smoothly (it resizes 1 and P by
    nearest pixel), its transparent colour, if any, as alpha."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" in image.info:  # PNG tRNS: a colour
        return image.convert("RGBA")
    if mode in ("P", "PA", "RGBa", "La", "1"):
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """L, LA, RGB or RGBA: 16-bit, 32-bit and float samples scaled into 0..255
    (a plain convert clips them: a 16-bit photo would come out white)."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        wide = image.convert("I") if mode.startswith("I;16") else image
        extrema = (0, 65535) if mode.startswith("I;16") else wide.getextrema()
        low, high = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
        span = high - low or 1.0
        scaled = wide.point(lambda v: (v - low) * 255.0 / span)
        return scaled.convert("L")
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV


_SOF_PROGRESSIVE = (0xC2, 0xC6, 0xCA, 0xCE)
_SOF_SEQUENTIAL = (0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF)


def _jpeg_layout(data: bytes) -> tuple[bool, int]:
    """(buffered, scans) of a JPEG: does libjpeg keep every coefficient of the
    image in memory (progressive, or a first scan without every component),
    and how many scans it has. The segments are walked to the first scan as
    libjpeg reads them; anything the walk cannot follow counts as the worst."""
    i, n = 2, len(data)
    progressive: bool | None = None
    components = 0
    steps = 0
    while i + 4 <= n:
        steps += 1
        if steps > MAX_JPEG_SEGMENTS:
            raise CorruptImage(
                f"the JPEG image has more than {MAX_JPEG_SEGMENTS} segments before its picture"
            )
        if data[i] != 0xFF:  # junk between segments: libjpeg skips to the next marker
            i = data.find(b"\xff", i)
            if i < 0:
                break
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length: TEM, RSTn, SOI
            i += 2
            continue
        if marker == 0xDA:  # the first scan
            if progressive is None:
                break
            buffered = progressive or data[i + 4] < components
            return buffered, data.count(b"\xff\xda", i)
        if (marker in _SOF_PROGRESSIVE or marker in _SOF_SEQUENTIAL) and i + 9 < n:
            progressive = marker in _SOF_PROGRESSIVE
            components = data[i + 9]
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return True, data.count(b"\xff\xda")


def _count_structures(data: bytes) -> None:
    """Refuse a file of countless tiny headers before Pillow walks them in Python."""
    if data[:3] == b"\xff\xd8\xff":
        _jpeg_layout(data)  # raises past MAX_JPEG_SEGMENTS
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        pos, chunks = 8, 0
        while pos + 8 <= len(data) and data[pos + 4 : pos + 8] != b"IEND":
            chunks += 1
            if chunks > MAX_PNG_CHUNKS:
                raise CorruptImage(f"the PNG image has more than {MAX_PNG_CHUNKS} chunks")
            pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        _count_tiff(data)
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) > 13:
        pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
        blocks = 0
        while pos + 2 < len(data) and data[pos] == 0x21:  # an extension, in sub-blocks
            pos += 2
            while pos < len(data):
                blocks += 1
                if blocks > MAX_GIF_BLOCKS:
                    raise CorruptImage(
                        f"the GIF image has more than {MAX_GIF_BLOCKS} blocks before its picture"
                    )
                size = data[pos]
                pos += 1 + size
                if size == 0:
                    break


def _count_tiff(data: bytes) -> None:
    """The first directory of a TIFF (or BigTIFF): its tags and strips, counted."""
    order = "little" if data[:2] == b"II" else "big"
    big = data[2:4] in (b"+\x00", b"\x00+")

    def number(at: int, size: int) -> int:
        return int.from_bytes(data[at : at + size], order)  # type: ignore[arg-type]

    ifd = number(8, 8) if big else number(4, 4)
    count_size, entry_size, field = (8, 20, 8) if big else (2, 12, 4)
    if ifd + count_size > len(data):
        return  # Pillow will say what is wrong
    entries = number(ifd, count_size)
    if entries > MAX_TIFF_TAGS:
        raise CorruptImage(f"the TIFF image has {entries} tags; at most {MAX_TIFF_TAGS} are read")
    for k in range(entries):
        at = ifd + count_size + entry_size * k
        if at + entry_size > len(data):
            break
        if number(at, 2) in (273, 279, 324, 325):  # strip/tile offsets and sizes
            pieces = number(at + 4, field)
            if pieces > MAX_TIFF_STRIPS:
                raise CorruptImage(
                    f"the TIFF image is cut in {pieces} strips or tiles; at most "
                    f"{MAX_TIFF_STRIPS} are read"
                )


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


def image_text(content: str, images: Sequence[StoredImage]) -> str:
    """A message whose images are not sent as pictures, as text.

    A photo's caption is its message's text: "what is this?" with a photo
    becomes "[image: what is this?]", not the question and then the question
    again; a longer text keeps its words and gets "[image]" marks.
    """
    if not images:
        return content
    if content.strip() and all(i.caption == content for i in images):
        caption = " ".join(content.split())[:120]
        many = f"{len(images)} images" if len(images) > 1 else "image"
        return f"[{many}: {caption}]"
    marks = [
        "[image]" if i.caption and content.startswith(i.caption) else image_placeholder(i)
        for i in images
    ]
    return " ".join([content, *marks]).strip()


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

        Raises a StorageError (disk full, read-only, permission denied), never
        a bare OSError: the chatter is told the image could not be kept.
        """
        relative = f"{folder_of(chat_id)}/{secrets.token_hex(12)}.jpg"
        target = self.root / relative
        tmp = target.with_suffix(".part")
        try:
            _mkdir_private(self.root, target.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        except OSError as exc:
            raise _storage_error(exc) from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(image.data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError):
                raise _storage_error(exc) from exc
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


def _mkdir_private(root: Path, path: Path) -> None:
    """Create ``path`` (inside ``root``) and the store itself 0700, whatever the
    umask (``mkdir(parents=True)`` would make the missing parents 0777 under
    umask 000: a world-writable media store)."""
    missing: list[Path] = []
    for level in (path, *path.parents):
        if level.is_dir():
            break
        missing.append(level)
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent save made it
            level.mkdir(mode=0o700)
    if path.is_symlink() or root.resolve() not in path.resolve().parents:
        # A chat's folder must be a folder of the store, not a link out of it.
        raise PermissionError(errno.EACCES, f"{path} is not a folder of the media store")
    for level in {root, path, *missing}:
        with contextlib.suppress(OSError):
            os.chmod(level, 0o700)


def _storage_error(exc: OSError) -> StorageError:
    what = "the image could not be stored"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{what}: the disk is full; free space in the data directory")
    if exc.errno == errno.EROFS:
        return StorageReadOnly(f"{what}: the data directory is read-only")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"{what}: permission denied on the media directory (data/media)")
    return StorageError(f"{what}: {exc.strerror or exc}")


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:120]
