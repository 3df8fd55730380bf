"""The body limits of the messages route: large enough for its images, still
refused before a byte is read when too big, the token checked first; every
other route keeps the small limit. And the upload gate that bounds how many
large bodies are in memory at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from core.errors import Busy
from core.http import max_body_bytes, upload_body_bytes
from core.runtime import Runtime
from core.uploads import UploadGate
from tests.conftest import LiveServer, make_settings
from tests.core.test_api_errors import error_of
from tests.fake_llm import FakeLLM


def noise_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(out, "PNG")
    return out.getvalue()


PNG_SMALL = small_png()


def status_before_body(port: int, path: str, headers: str) -> tuple[int, bytes]:
    """Send only the request head (no body) and read the answer: a server that
    waited for the body would time out here instead of answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n".encode("latin-1")
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
def tight(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> LiveServer:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        llm_vision_model="fake",
        max_images_per_message=1,
        max_image_bytes=4096,
        max_audio_bytes=1024,
    )
    return live_server_factory(settings)


def test_the_upload_limit_fits_the_configured_media() -> None:
    settings = make_settings(Path("/nonexistent"))  # defaults: 4 images of 10 MB, 25 MB audio
    limit = upload_body_bytes(settings)
    small = max_body_bytes(settings.max_message_chars)
    base64_image = 4 * -(-settings.max_image_bytes // 3)
    assert limit >= small + 4 * len("data:image/jpeg;base64,") + 4 * base64_image
    assert limit >= small + settings.max_audio_bytes
    assert limit < small + 4 * base64_image + 4096  # and not much more


def test_a_declared_too_big_body_is_refused_before_it_is_read(tight: LiveServer) -> None:
    limit = upload_body_bytes(tight.settings)
    port = tight.settings.port
    auth = f"Authorization: Bearer {tight.token}\r\n"
    kind = "Content-Type: multipart/form-data; boundary=x\r\n"
    status, body = status_before_body(
        port, "/api/chats/big/messages", f"{auth}{kind}Content-Length: {limit + 1}\r\n"
    )
    assert status == 413 and str(limit).encode() in body
    # The token is still checked first: an anonymous one learns nothing about sizes.
    status, _ = status_before_body(
        port, "/api/chats/big/messages", f"{kind}Content-Length: {limit + 1}\r\n"
    )
    assert status == 401
    # Within the limit: the server waits for the body (here: never sent) - no answer yet.
    with (
        pytest.raises(TimeoutError),
        socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
    ):
        sock.sendall(
            f"POST /api/chats/big/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{kind}"
            f"Content-Length: {limit}\r\n\r\n".encode()
        )
        sock.recv(100)


def test_a_chunked_body_is_cut_off_at_the_limit(tight: LiveServer) -> None:
    limit = upload_body_bytes(tight.settings)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(limit // 10_000 + 2):
            yield b"x" * 10_000

    response = tight.client.post(
        "/api/chats/chunked/messages",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert error_of(response)["limit"] == limit
    assert tight.client.get("/api/chats/chunked/messages").status_code == 404  # nothing stored
    assert tight.chat("chunked", "still fine").status_code == 200


def test_an_image_larger_than_the_text_limit_passes_only_on_the_messages_route(
    live_server_factory: Callable[..., LiveServer], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    server = live_server_factory(
        make_settings(tmp_path, llm_base_url=fake_llm.url, llm_vision_model="fake")
    )
    image = noise_png(256)  # ~200 KB: more than the text limit (~100 KB)
    assert len(image) > max_body_bytes(server.settings.max_message_chars)
    files = [("image", ("n.png", image, "image/png"))]
    sent = server.client.post("/api/chats/n/messages", files=files)
    assert sent.status_code == 200, sent.text
    assert sent.json()["images"][0]["width"] == 256
    elsewhere = server.client.post("/resources/cleanup", files=files)
    assert elsewhere.status_code == 413


async def test_the_upload_gate_refuses_beyond_its_slots_with_a_429() -> None:
    gate = UploadGate(1, wait_s=0.05)
    async with gate.slot():
        with pytest.raises(Busy) as caught:
            async with gate.slot():
                pass
    assert caught.value.status == 429 and caught.value.retry_after > 0
    async with gate.slot():  # freed again
        pass


async def test_a_waiting_upload_gets_the_slot_when_it_frees() -> None:
    gate = UploadGate(1, wait_s=5)
    order: list[str] = []
    release = asyncio.Event()

    async def first() -> None:
        async with gate.slot():
            order.append("first in")
            await release.wait()
        order.append("first out")

    async def second() -> None:
        async with gate.slot():
            order.append("second in")

    task = asyncio.ensure_future(first())
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(second())
    await asyncio.sleep(0.01)
    assert order == ["first in"]
    release.set()
    await asyncio.gather(task, waiting)
    assert order == ["first in", "first out", "second in"]


def test_images_in_a_small_body_are_decoded_under_the_gate_too(tight: LiveServer) -> None:
    """A small file can hold a large canvas: its decoding needs a slot as well."""
    gate = UploadGate(1, wait_s=0.2)
    tight.runtime.uploads = gate  # one slot, held below by a long upload
    release = threading.Event()
    holding: list[asyncio.Future[None]] = []

    async def hold(runtime: object) -> None:
        entered = asyncio.Event()

        async def holder() -> None:
            async with gate.slot():
                entered.set()
                while not release.is_set():
                    await asyncio.sleep(0.01)

        holding.append(asyncio.ensure_future(holder()))
        await entered.wait()

    tight.call(hold)
    small = [("image", ("s.png", noise_png(8), "image/png"))]
    busy = tight.client.post("/api/chats/g/messages", files=small)
    assert busy.status_code == 429, busy.text
    assert error_of(busy)["code"] == "busy" and busy.headers["retry-after"]
    assert tight.chat("g", "text needs no slot").status_code == 200
    release.set()
    assert tight.client.post("/api/chats/g/messages", files=small).status_code == 200


def stalled_upload(
    port: int,
    token: str,
    chat: str,
    length: int,
    trickle_s: float = 0.0,
    kind: str = "application/json",
) -> socket.socket:
    """A large upload whose head and first bytes are sent, then nothing (or one
    byte every ``trickle_s``): a client stuck on a dead link, or a slow-loris."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    start = '{"text": "' if kind == "application/json" else "--xx\r\n"
    head = (
        f"POST /api/chats/{chat}/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Type: {kind}\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall((head + start).encode())
    if trickle_s:

        def trickle() -> None:
            with contextlib.suppress(OSError):
                for _ in range(200):
                    sock.sendall(b"x")
                    time.sleep(trickle_s)

        threading.Thread(target=trickle, daemon=True).start()
    return sock


def answer_of(sock: socket.socket) -> tuple[int, bytes]:
    answer = b""
    while not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)  # times out (15 s) if the server never answers
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trickle_s", "words"),
    [(0.0, b"stalled: no byte came for 1 s"), (0.2, b"was not all sent within 3 s")],
    ids=["stalled", "trickled"],
)
def test_stalled_uploads_are_refused_and_free_their_slots(
    tight: LiveServer, fake_llm: FakeLLM, trickle_s: float, words: bytes
) -> None:
    gate = tight.runtime.uploads
    gate.idle_s, gate.read_s = 1.0, 3.0
    port = tight.settings.port
    socks = [
        stalled_upload(port, tight.token, f"loris{i}", upload_body_bytes(tight.settings), trickle_s)
        for i in range(gate.slots)
    ]
    try:
        for sock in socks:
            status, body = answer_of(sock)
            assert status == 408, body
            assert b'"upload_stalled"' in body and words in body
    finally:
        for sock in socks:
            sock.close()
    # the slots are free again: an image upload is read at once, not 429 busy
    response = tight.client.post(
        "/api/chats/after/messages", files={"image": ("a.png", PNG_SMALL, "image/png")}
    )
    assert response.status_code == 200, response.text
    assert tight.call(lambda rt: rt.db.scalar("SELECT count(*) FROM messages")) == 2


@pytest.mark.slow
def test_slow_multipart_uploads_hold_no_slot(tight: LiveServer, fake_llm: FakeLLM) -> None:
    """A form is spooled to disk as it comes: however many are slow, an image upload
    is read at once (it waited 10 s for a 429 behind two)."""
    kind = "multipart/form-data; boundary=xx"
    port, length = tight.settings.port, upload_body_bytes(tight.settings)
    socks = [
        stalled_upload(port, tight.token, f"slow{i}", length, kind=kind)
        for i in range(tight.runtime.uploads.slots + 1)
    ]
    try:
        time.sleep(0.5)  # their heads are read, their routes wait for the body
        response = tight.client.post(
            "/api/chats/after/messages",
            files={"image": ("a.png", PNG_SMALL, "image/png")},
            data={"text": "still here?"},
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["images"]) == 1
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_large_forms_read_at_once_are_bounded(tight: LiveServer) -> None:
    """Each spools up to the body limit to disk: beyond ``readers`` of them, 429."""
    gate = tight.runtime.uploads
    gate.wait_s = 1.0
    kind = "multipart/form-data; boundary=xx"
    port, length = tight.settings.port, upload_body_bytes(tight.settings)
    socks = [
        stalled_upload(port, tight.token, f"slow{i}", length, kind=kind)
        for i in range(gate.readers + 1)
    ]
    try:
        answered = []
        for sock in socks:
            sock.settimeout(3)
            with contextlib.suppress(TimeoutError):
                answered.append(answer_of(sock))
        assert [status for status, _ in answered] == [429], answered
        assert b'"busy"' in answered[0][1]
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_uploads_still_coming_when_draining_starts_are_told_to_come_back(
    tight: LiveServer, fake_llm: FakeLLM
) -> None:
    """Not left to be cancelled (a traceback each) when the server stops: a 503 at once."""
    port, length = tight.settings.port, upload_body_bytes(tight.settings)
    socks = [
        stalled_upload(port, tight.token, "j", length),
        stalled_upload(port, tight.token, "m", length, kind="multipart/form-data; boundary=xx"),
    ]
    try:
        time.sleep(0.5)  # their heads are read; their bodies never come (idle limit: 30 s)

        async def drain(runtime: Runtime) -> None:
            runtime.admission.start_draining(reason="restart", retry_after=7)

        tight.call(drain)
        for sock in socks:
            status, body = answer_of(sock)  # 15 s socket timeout: long before the idle limit
            assert status == 503, body
            assert b'"restarting"' in body and b"send it again" in body
            assert b'"retry_after":7' in body.replace(b" ", b"")
    finally:
        for sock in socks:
            sock.close()
    assert tight.call(lambda rt: rt.db.scalar("SELECT count(*) FROM messages")) == 0
