"""prepare_image under attack: bombs, odd modes, odd formats, damaged files.

Every input either becomes a small upright RGB JPEG or is refused with a
MediaError naming the problem; nothing else escapes, and nothing decodes a
canvas larger than the limits (real Pillow, real files built in memory).
"""

from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from PIL import Image

from core.errors import CorruptImage, ImageTooLarge, MediaError, NotAnImage
from core.media import (
    MAX_DECODED_PIXELS,
    MAX_GIF_BLOCKS,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS,
    MAX_TIFF_STRIPS,
    MAX_TIFF_TAGS,
    MAX_WEBP_PIXELS,
    PreparedImage,
    _jpeg_layout,
    prepare_image,
)

LIMIT = 10 * 1_048_576
SIDE = 1568
ROOT = Path(__file__).resolve().parents[3]


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def prepare(data: bytes) -> PreparedImage:
    return prepare_image(data, max_bytes=LIMIT, max_side=SIDE)


def pixel(prepared: PreparedImage, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.format == "JPEG" and out.mode == "RGB"
        value = out.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def near(a: tuple[int, ...], b: tuple[int, ...], slack: int = 6) -> bool:
    return all(abs(x - y) <= slack for x, y in zip(a, b, strict=True))


# --- formats ---------------------------------------------------------------------


def tiny(fmt: str, mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, (16, 16), "red" if mode == "RGB" else 1), fmt)


@pytest.mark.parametrize(
    "fmt", ["ICO", "TGA", "PPM", "PCX", "QOI", "SGI", "JPEG2000", "AVIF", "DDS", "EPS"]
)
def test_only_the_usual_formats_are_decoded(fmt: str) -> None:
    data = tiny(fmt)
    with pytest.raises(NotAnImage) as caught:
        prepare(data)
    assert "JPEG, PNG, WebP, GIF, BMP or TIFF" in caught.value.message


def test_an_eps_never_runs_ghostscript(tmp_path: Path) -> None:
    # A "gs" first on PATH that leaves a mark if anything runs it: Pillow's EPS
    # reader would (a PostScript file is a program).
    mark = tmp_path / "gs-ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
    fake.chmod(0o755)
    eps = encode(Image.new("RGB", (16, 16), "red"), "EPS")
    script = textwrap.dedent(
        f"""
        from core.errors import MediaError
        from core.media import prepare_image
        try:
            prepare_image({eps!r}, max_bytes=10_000_000, max_side=1568)
        except MediaError as exc:
            print(type(exc).__name__)
        """
    )
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NotAnImage"
    assert not mark.exists()


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>',
        b"<!DOCTYPE html><html><script>alert(1)</script></html>",
        b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        b"PK\x03\x04" + b"\x00" * 64,
    ],
)
def test_documents_that_are_not_pictures_are_refused(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        prepare(data)


def test_a_polyglot_comes_out_as_a_clean_jpeg() -> None:
    gif = encode(Image.new("P", (8, 8)), "GIF")
    prepared = prepare(gif + b"<html><script>alert(1)</script></html>")
    assert b"<script" not in prepared.data and prepared.data[:3] == b"\xff\xd8\xff"


def test_an_mpo_is_read_as_its_first_picture() -> None:
    first, second = Image.new("RGB", (32, 16), "blue"), Image.new("RGB", (32, 16), "red")
    data = encode(first, "MPO", save_all=True, append_images=[second])
    prepared = prepare(data)
    assert (prepared.width, prepared.height) == (32, 16)
    assert near(pixel(prepared), (0, 0, 255), 12)


# --- size --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Tiny files of canvases just above what is decoded at full size."""
    side = int(MAX_DECODED_PIXELS**0.5) + 64
    webp = int(MAX_WEBP_PIXELS**0.5) + 64
    rgba = Image.new("RGBA", (side, side), (1, 2, 3, 4))
    return {
        "png-rgba": encode(rgba, "PNG"),
        "png-16bit": encode(Image.new("I;16", (side, side), 7), "PNG"),
        "png-1bit": encode(Image.new("1", (side, side)), "PNG"),
        "gif": encode(Image.new("P", (side, side)), "GIF"),
        "tiff-deflate": encode(rgba, "TIFF", compression="tiff_deflate"),
        "webp-lossless": encode(Image.new("RGBA", (webp, webp)), "WEBP", lossless=True),
        "jpeg-progressive": encode(Image.new("RGB", (side, side)), "JPEG", progressive=True),
    }


@pytest.mark.parametrize(
    "name",
    [
        "png-rgba",
        "png-16bit",
        "png-1bit",
        "gif",
        "tiff-deflate",
        "webp-lossless",
        "jpeg-progressive",
    ],
)
def test_a_small_file_with_a_huge_canvas_is_refused_before_decoding(
    bombs: dict[str, bytes], name: str
) -> None:
    data = bombs[name]
    assert len(data) < 1_000_000
    with pytest.raises(ImageTooLarge) as caught:
        prepare(data)
    assert "megapixels are read" in caught.value.message and caught.value.status == 413


def test_a_large_baseline_jpeg_is_read_at_a_reduced_scale() -> None:
    # A 48 MP camera photo: libjpeg decodes it at 1/4, so it is accepted.
    prepared = prepare(encode(Image.new("RGB", (8000, 6000), "green"), "JPEG", quality=20))
    assert (prepared.width, prepared.height) == (SIDE, 1176)


def test_a_jpeg_claiming_a_gigantic_canvas_is_refused() -> None:
    data = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)  # height, width
    with pytest.raises(ImageTooLarge):
        prepare(bytes(data))


def jpeg_with_scans(count: int) -> bytes:
    data = encode(Image.new("RGB", (64, 64)), "JPEG", progressive=True)
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * count + b"\xff\xd9"


def test_a_progressive_jpeg_of_thousands_of_scans_is_refused() -> None:
    # Each scan is a pass over the whole image: 20,000 scans of a 3400 px
    # square (600 KB) kept a CPU busy for over five minutes.
    data = jpeg_with_scans(5000)
    with pytest.raises(CorruptImage) as caught:
        prepare(data)
    assert f"at most {MAX_JPEG_SCANS} are read" in caught.value.message


def test_an_ordinary_progressive_jpeg_is_read() -> None:
    prepared = prepare(encode(Image.new("RGB", (640, 480), "blue"), "JPEG", progressive=True))
    assert (prepared.width, prepared.height) == (640, 480)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1, 1), (1, 1)), ((1, 60000), (1, SIDE)), ((60000, 1), (SIDE, 1)), ((3, 5000), (1, SIDE))],
)
def test_extreme_shapes(size: tuple[int, int], expected: tuple[int, int]) -> None:
    prepared = prepare(encode(Image.new("RGB", size, "white"), "PNG"))
    assert (prepared.width, prepared.height) == expected


def test_a_zero_width_png_is_refused() -> None:
    data = bytearray(encode(Image.new("L", (4, 4)), "PNG"))
    data[16:20] = b"\x00\x00\x00\x00"  # IHDR width
    with pytest.raises(MediaError):
        prepare(bytes(data))


def gif_frames(count: int) -> bytes:
    """A GIF of ``count`` 1x1 frames, written by hand (Pillow merges equal frames)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00"  # LZW min code 2, one sub-block, pixel 0
    )
    return head + frame * count + b"\x3b"


def test_ten_thousand_frames_read_only_the_first() -> None:
    data = gif_frames(10_000)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 10_000
    prepared = prepare(data)
    assert (prepared.width, prepared.height) == (1, 1)


# --- modes and colour ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("I;16", (8, 8), 30000), "PNG", 117),  # 16-bit grey: 30000/65535
        (Image.new("I;16", (8, 8), 30000), "TIFF", 117),
        (Image.linear_gradient("L").convert("I").point(lambda v: v * 1000), "TIFF", None),
        (Image.linear_gradient("L").convert("F").point(lambda v: v / 255.0), "TIFF", None),
    ],
)
def test_wide_samples_keep_their_brightness(
    image: Image.Image, fmt: str, expected: int | None
) -> None:
    prepared = prepare(encode(image, fmt))
    if expected is not None:
        assert near(pixel(prepared, (4, 4)), (expected,) * 3)
    else:  # a gradient: black at the top, white at the bottom, not all one colour
        top, bottom = pixel(prepared, (128, 2)), pixel(prepared, (128, 253))
        assert near(top, (0, 0, 0), 12) and near(bottom, (255, 255, 255), 12)


def palette_image(transparent_index: int) -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = transparent_index
    return image


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encode(Image.new("RGB", (8, 8), (0, 0, 255)), "PNG", transparency=(0, 0, 255)), "white"),
        (encode(Image.new("L", (8, 8), 7), "PNG", transparency=7), "white"),
        (encode(palette_image(1), "PNG"), "white"),
        (encode(palette_image(1), "GIF"), "white"),
        (encode(palette_image(0), "GIF"), "blue"),
        (encode(Image.new("LA", (8, 8), (0, 0)), "PNG"), "white"),
        (encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "WEBP", lossless=True), "white"),
        (encode(Image.new("RGBA", (8, 8), (255, 0, 0, 255)), "TIFF"), "red"),
        (encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), "red"),
        (encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "TIFF"), "red"),
        (encode(Image.new("1", (8, 8), 1), "BMP"), "white"),
        (encode(Image.new("RGB", (8, 8), "blue"), "BMP"), "blue"),
    ],
)
def test_transparency_is_white_and_colours_survive(data: bytes, expected: str) -> None:
    colours = {"white": (255, 255, 255), "red": (255, 0, 0), "blue": (0, 0, 255)}
    assert near(pixel(prepare(data), (4, 4)), colours[expected], 12)


def upright() -> Image.Image:
    """40x20, red in the top-left corner: what every orientation must show."""
    image = Image.new("RGB", (40, 20), "white")
    image.paste((255, 0, 0), (0, 0, 10, 10))
    return image


# How the camera stored the picture for each EXIF orientation (the inverse of
# what the viewer does to show it upright).
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", sorted(STORED))
def test_every_exif_orientation_comes_out_upright(orientation: int, fmt: str) -> None:
    how = STORED[orientation]
    stored = upright() if how is None else upright().transpose(how)
    exif = Image.Exif()
    exif[0x0112] = orientation
    if fmt == "TIFF":  # a TIFF's orientation is a tag of its own directory
        data = encode(stored, fmt, tiffinfo={0x0112: orientation})
    else:
        data = encode(stored, fmt, exif=exif.tobytes())
    prepared = prepare(data)
    assert (prepared.width, prepared.height) == (40, 20)
    assert near(pixel(prepared, (2, 2)), (255, 0, 0), 40)
    assert near(pixel(prepared, (37, 17)), (255, 255, 255), 40)


def test_a_damaged_exif_is_ignored() -> None:
    data = encode(Image.new("RGB", (8, 8), "red"), "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff")
    assert near(pixel(prepare(data), (4, 4)), (255, 0, 0), 12)


def test_a_megabyte_of_icc_and_exif_is_not_passed_on() -> None:
    image = Image.new("RGB", (64, 64), "red")
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: one APP1 segment is at most 64 KB
    data = encode(image, "JPEG", icc_profile=os.urandom(1_000_000), exif=exif.tobytes())
    assert len(data) > 1_000_000
    prepared = prepare(data)
    assert len(prepared.data) < 5_000
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert "icc_profile" not in out.info and "exif" not in out.info


# --- damaged files --------------------------------------------------------------------


def samples() -> dict[str, bytes]:
    base = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    return {
        "JPEG": encode(base, "JPEG"),
        "JPEG-progressive": encode(base, "JPEG", progressive=True),
        "PNG": encode(base, "PNG"),
        "GIF": encode(base.convert("P"), "GIF"),
        "WEBP": encode(base, "WEBP"),
        "WEBP-lossless": encode(base, "WEBP", lossless=True),
        "BMP": encode(base, "BMP"),
        "TIFF": encode(base, "TIFF"),
        "TIFF-deflate": encode(base, "TIFF", compression="tiff_deflate"),
        "GIF-animated": encode(
            base.convert("P"), "GIF", save_all=True, append_images=[base.convert("P")] * 3
        ),
    }


SAMPLES = samples()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_file_cut_short_is_refused_or_read_never_crashes(name: str) -> None:
    data = SAMPLES[name]
    for cut in sorted({1, 4, 8, 16, 30, 60, 100, len(data) // 2, len(data) - 20, len(data) - 1}):
        try:
            prepared = prepare(data[:cut])
        except MediaError as exc:
            assert exc.message and exc.status in (413, 415, 422)
        else:
            assert prepared.data[:3] == b"\xff\xd8\xff"
    with pytest.raises(MediaError):  # half a picture is never passed on
        prepare(data[: len(data) // 2])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_damaged_bytes_only_ever_give_a_media_error(name: str) -> None:
    data = SAMPLES[name]
    rng = random.Random(name)
    for _ in range(60):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(min(len(damaged), 400))  # the headers, mostly
            damaged[at] = rng.randrange(256)
        try:
            prepare(bytes(damaged))
        except MediaError:
            pass


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("kind", "head"),
    [(b"iCCP", b"icc\x00\x00"), (b"zTXt", b"k\x00\x00"), (b"iTXt", b"k\x00\x01\x00\x00\x00")],
)
def test_a_png_chunk_that_inflates_to_gigabytes_is_refused_with_a_plain_reason(
    kind: bytes, head: bytes
) -> None:
    png = encode(Image.new("RGB", (8, 8)), "PNG")
    bomb = zlib.compress(b"\x00" * 100_000_000, 9)  # 100 MB in 100 KB
    data = png[:33] + png_chunk(kind, head + bomb) + png[33:]
    with pytest.raises(CorruptImage) as caught:
        prepare(data)
    assert caught.value.message.startswith("the image could not be read")  # not "the ? image"


def with_junk_before(data: bytes, marker: bytes) -> bytes:
    at = data.index(marker)
    return data[:at] + b"\x00\x17" + data[at:]  # libjpeg skips it with a warning


def test_junk_before_the_frame_header_does_not_hide_a_progressive_jpeg() -> None:
    side = int(MAX_DECODED_PIXELS**0.5) + 64
    data = encode(Image.new("RGB", (side, side)), "JPEG", progressive=True)
    with pytest.raises(ImageTooLarge):
        prepare(with_junk_before(data, b"\xff\xc2"))


def test_junk_before_the_frame_header_does_not_hide_thousands_of_scans() -> None:
    with pytest.raises(CorruptImage):
        prepare(with_junk_before(jpeg_with_scans(5000), b"\xff\xc2"))


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def test_a_fake_scan_header_inside_a_segment_does_not_hide_a_buffered_jpeg() -> None:
    # A sequential JPEG whose first scan has one component of three makes
    # libjpeg buffer the whole image (like a progressive one); bytes that look
    # like an interleaved scan header inside a comment before it must not pass
    # for the first scan. (Pillow cannot write such a file: the headers alone.)
    frame = segment(0xC0, b"\x08" + struct.pack(">HH", 5000, 5000) + b"\x03" + b"\x01\x11\x00" * 3)
    fake = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    first_scan = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    data = b"\xff\xd8" + frame + segment(0xFE, fake) + first_scan + b"\x00" * 64 + b"\xff\xd9"
    assert _jpeg_layout(data) == (True, 1)
    interleaved = segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00")
    assert _jpeg_layout(b"\xff\xd8" + frame + interleaved + b"\xff\xd9") == (False, 1)


def tiled_tiff(side: int, tile: int) -> bytes:
    """An RGB TIFF of ``side`` px in one deflated tile of ``tile`` px, by hand."""
    squeeze = zlib.compressobj(9)
    tile_data = squeeze.compress(b"\x00" * (tile * tile * 3)) + squeeze.flush()
    entries = [
        (256, 3, 1, side),
        (257, 3, 1, side),
        (258, 3, 3, 8),  # BitsPerSample: three shorts at offset 8
        (259, 3, 1, 8),  # deflate
        (262, 3, 1, 2),  # RGB
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 4, 1, tile),
        (323, 4, 1, tile),
        (324, 4, 1, 16),
        (325, 4, 1, len(tile_data)),
    ]
    ifd = 16 + len(tile_data) + len(tile_data) % 2
    out = b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<HHH", 8, 8, 8) + b"\x00\x00"
    out += tile_data + b"\x00" * (ifd - 16 - len(tile_data))
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if kind == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    return out + b"\x00\x00\x00\x00"


def test_a_tiff_of_one_gigantic_tile_is_refused() -> None:
    assert prepare(tiled_tiff(64, 256)).width == 64  # tiles are fine
    with pytest.raises(ImageTooLarge) as caught:
        prepare(tiled_tiff(64, 4096))  # 48 KB on disk, 48 MB decoded for 64x64
    assert "tiles of 4096x4096 pixels" in caught.value.message


def rle_bmp(side: int, *, bits: int) -> bytes:
    """A run-length BMP, by hand: RLE4 runs of 255 pixels, or RLE8 rows of one
    pixel and an end-of-line (Pillow pads each row in Python, byte by byte)."""
    if bits == 4:
        row = bytes([255, 0x12]) * (side // 255) + bytes([side % 255, 0x12]) + b"\x00\x00"
    else:
        row = b"\x01\x05\x00\x00"
    pixels = row * side + b"\x00\x01"
    colors = 1 << bits
    palette = b"\x00\x00\xff\x00" * colors
    offset = 14 + 40 + len(palette)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    compression = 2 if bits == 4 else 1
    info = struct.pack(
        "<IiiHHIIiiII", 40, side, side, 1, bits, compression, len(pixels), 2835, 2835, colors, 0
    )
    return head + info + palette + pixels


@pytest.mark.parametrize("bits", [4, 8])
def test_a_large_run_length_bmp_is_refused(bits: int) -> None:
    small = prepare(rle_bmp(600, bits=bits))
    assert (small.width, small.height) == (600, 600)
    data = rle_bmp(3400, bits=bits)  # 12 MP: 1-3 s of CPU in Pillow's Python decoder
    assert len(data) < 200_000
    with pytest.raises(ImageTooLarge):
        prepare(data)


def countless(fmt: str, count: int) -> bytes:
    """A small picture whose headers hold ``count`` tiny empty structures."""
    if fmt == "JPEG":
        data = encode(Image.new("RGB", (8, 8)), "JPEG")
        return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]  # empty comments
    if fmt == "PNG":
        data = encode(Image.new("RGB", (8, 8)), "PNG")
        at = data.index(b"IDAT") - 4
        return data[:at] + png_chunk(b"abCd", b"") * count + data[at:]
    data = encode(Image.new("P", (8, 8)), "GIF")
    at = data.index(b"\x2c")
    return data[:at] + b"\x21\xfe" + b"\x01x" * count + b"\x00" + data[at:]


@pytest.mark.parametrize(
    ("fmt", "limit"),
    [("JPEG", MAX_JPEG_SEGMENTS), ("PNG", MAX_PNG_CHUNKS), ("GIF", MAX_GIF_BLOCKS)],
)
def test_countless_tiny_headers_are_refused_before_pillow_walks_them(fmt: str, limit: int) -> None:
    # 10 MB of them took Pillow's Python header readers 2-7 s of CPU.
    assert prepare(countless(fmt, limit // 2)).width == 8  # many, but not countless
    with pytest.raises(CorruptImage) as caught:
        prepare(countless(fmt, limit + 10))
    assert f"more than {limit}" in caught.value.message


@pytest.mark.parametrize("fmt", ["GIF", "JPEG", "PNG"])
def test_the_senders_comment_is_not_passed_on_even_a_long_one(fmt: str) -> None:
    # A JPEG comment holds at most 64 KB: a longer one (fine in a GIF or PNG)
    # made the re-encoding raise ValueError.
    comment = b"sender's secret " * 5000
    image = Image.new("P" if fmt == "GIF" else "RGB", (8, 8))
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("comment", comment.decode())
        data = encode(image, fmt, pnginfo=info)
    else:
        data = encode(image, fmt, comment=comment[:60_000] if fmt == "JPEG" else comment)
    prepared = prepare(data)
    assert b"secret" not in prepared.data
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert "comment" not in out.info


def striped_tiff(height: int, *, extra_tags: int = 0) -> bytes:
    """A 1-pixel-wide grey TIFF with one strip per row, by hand."""
    pixels = b"\x80" * height
    offsets_at = 8 + len(pixels)
    counts_at = offsets_at + 4 * height
    ifd = counts_at + 4 * height
    entries = [
        (256, 3, 1, 1),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, height, offsets_at),
        (277, 3, 1, 1),
        (278, 4, 1, 1),
        (279, 4, height, counts_at),
    ]
    entries += [(40000 + k, 3, 1, 7) for k in range(extra_tags)]
    out = b"II*\x00" + struct.pack("<I", ifd) + pixels
    out += struct.pack(f"<{height}I", *range(8, 8 + height))
    out += struct.pack(f"<{height}I", *([1] * height))
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in sorted(entries):
        if kind == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    return out + b"\x00\x00\x00\x00"


def test_a_tiff_of_countless_strips_or_tags_is_refused_before_pillow_reads_it() -> None:
    # 1 M strips (9 MB) took 6.6 s and 390 MB; 65,000 tags 0.5 s.
    assert prepare(striped_tiff(1000)).height == 1000
    with pytest.raises(CorruptImage) as caught:
        prepare(striped_tiff(MAX_TIFF_STRIPS + 1))
    assert f"at most {MAX_TIFF_STRIPS} are read" in caught.value.message
    with pytest.raises(CorruptImage) as caught:
        prepare(striped_tiff(10, extra_tags=MAX_TIFF_TAGS))
    assert "tags" in caught.value.message


def test_a_bigtiff_is_read() -> None:
    data = encode(Image.new("RGB", (40, 30), "red"), "TIFF", big_tiff=True)
    assert data[:4] == b"II+\x00"
    assert (prepare(data).width, prepare(data).height) == (40, 30)
