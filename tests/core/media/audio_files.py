"""Small real audio files built offline: WAV with the ``wave`` module, Ogg Opus
pages written by mutagen's own Ogg page writer (what Telegram voice notes are).

The Opus packets are silence frames (TOC byte 0xF8 + nothing: a 20 ms CELT
frame marked as DTX), so a decoder reads them as quiet audio; the length is in
the last page's granule position, as in a real file.
"""

from __future__ import annotations

import io
import struct
import wave

from mutagen.ogg import OggPage

OPUS_RATE = 48_000
PRE_SKIP = 312


def wav(seconds: float, *, rate: int = 8000) -> bytes:
    """A mono 16-bit PCM WAV of silence, ``seconds`` long."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return out.getvalue()


def ogg_opus(seconds: float, *, serial: int = 0x1234) -> bytes:
    """An Ogg Opus stream (OpusHead, OpusTags, audio pages) ``seconds`` long."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, PRE_SKIP, OPUS_RATE, 0, 0)
    vendor = b"vigil-tests"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [_page([head], serial, 0, 0, first=True), _page([tags], serial, 1, 0)]
    frames = max(1, round(seconds * 50))  # 20 ms per packet
    per_page = 50
    done = 0
    sequence = 2
    while done < frames:
        count = min(per_page, frames - done)
        done += count
        last = done == frames
        granule = PRE_SKIP + done * 960
        pages.append(_page([b"\xf8"] * count, serial, sequence, granule, last=last))
        sequence += 1
    return b"".join(pages)


def _page(
    packets: list[bytes],
    serial: int,
    sequence: int,
    granule: int,
    *,
    first: bool = False,
    last: bool = False,
) -> bytes:
    page = OggPage()
    page.packets = packets
    page.serial = serial
    page.sequence = sequence
    page.position = granule
    page.first = first
    page.last = last
    return page.write()


def flac(seconds: float, *, rate: int = 16_000) -> bytes:
    """A FLAC stream header (STREAMINFO with the sample count) and no frames."""
    samples = int(seconds * rate)
    info = struct.pack(">HH", 4096, 4096) + b"\0\0\0" + b"\0\0\0"  # block sizes, frame sizes
    # 20 bits rate, 3 bits channels-1, 5 bits bits-per-sample-1, 36 bits total samples
    packed = (rate << 44) | (0 << 41) | (15 << 36) | samples
    info += packed.to_bytes(8, "big") + b"\0" * 16  # + MD5
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info


def mp3(seconds: float) -> bytes:
    """MPEG-1 Layer III frames of silence at 128 kbit/s, 44.1 kHz (26.12 ms each)."""
    frame = b"\xff\xfb\x90\x00" + b"\0" * 413  # 417 bytes: 144 * 128000 / 44100
    return frame * round(seconds / 0.026122)
