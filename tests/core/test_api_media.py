"""Images through the local API: JSON data URLs and multipart uploads, listed with
the history, served back; every bad upload a 4xx naming the problem with
nothing stored.

A real uvicorn (LiveServer), real SQLite, real Pillow, the fake model over HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from core.media import data_url
from tests.conftest import LiveServer, make_settings
from tests.core.test_api_errors import error_of
from tests.fake_llm import FakeLLM, text_of

MAX_IMAGE_BYTES = 200_000


def png(width: int = 80, height: int = 60, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def noise_png(side: int = 400) -> bytes:
    """A PNG that does not compress: larger than MAX_IMAGE_BYTES."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def upload(data: bytes, name: str = "a.png", mime: str = "image/png") -> tuple[str, Any]:
    return ("image", (name, data, mime))


def decoded_size(url: str) -> tuple[int, int]:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size


@pytest.fixture
def eyes(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> LiveServer:
    """A server whose one model sees (VIGIL_LLM_VISION_MODEL names it)."""
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        llm_vision_model="fake",
        max_images_per_message=2,
        max_image_bytes=MAX_IMAGE_BYTES,
    )
    return live_server_factory(settings)


def stored(server: LiveServer) -> tuple[int, int, list[str]]:
    """(messages, message_images, files under data/media) of the whole server."""
    messages = server.call(lambda rt: rt.db.scalar("SELECT count(*) FROM messages"))
    images = server.call(lambda rt: rt.db.scalar("SELECT count(*) FROM message_images"))
    media = server.settings.media_dir
    files = [p.name for p in media.rglob("*") if p.is_file()] if media.exists() else []
    return messages, images, files


# --- accepted ------------------------------------------------------------------------


def test_json_images_reach_the_model_and_come_back(eyes: LiveServer, fake_llm: FakeLLM) -> None:
    response = eyes.client.post(
        "/api/chats/j/messages",
        json={"text": "what is this?", "images": [data_url(png(80, 60), "image/png")]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "fake" and body["reply"] == "echo: what is this?"
    (url,) = fake_llm.image_urls()
    assert decoded_size(url) == (80, 60)
    (image,) = body["images"]
    assert (image["width"], image["height"]) == (80, 60)
    assert image["url"] == f"/api/chats/j/images/{image['id']}"

    history = eyes.client.get("/api/chats/j/messages").json()["messages"]
    assert [m["images"] for m in history] == [[], [image]]  # newest first: the reply has none
    served = eyes.client.get(image["url"])
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/jpeg"
    assert len(served.content) == image["bytes"]
    assert Image.open(io.BytesIO(served.content)).size == (80, 60)
    assert served.content == base64.b64decode(url.split(",", 1)[1])  # what the model saw


def test_multipart_images_without_text(eyes: LiveServer, fake_llm: FakeLLM) -> None:
    response = eyes.client.post(
        "/api/chats/m/messages",
        files=[upload(png(80, 60)), upload(png(3000, 1000, "blue"), "b.png")],
        data={"user": "ann"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "fake"
    assert [decoded_size(u) for u in fake_llm.image_urls()] == [(80, 60), (1568, 523)]
    (user_turn,) = eyes.client.get("/api/chats/m/messages", params={"role": "user"}).json()[
        "messages"
    ]
    assert user_turn["content"] == ""
    assert [(i["width"], i["height"]) for i in user_turn["images"]] == [(80, 60), (1568, 523)]
    assert stored(eyes)[:2] == (2, 2)


def test_multipart_image_with_a_streamed_reply(eyes: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.reply = "a red square"
    response = eyes.client.post(
        "/api/chats/s/messages",
        files=[upload(png())],
        data={"text": "look", "stream": "true"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert events[-1].startswith("event: done")
    assert done["reply"] == "a red square" and done["model"] == "fake"
    assert len(fake_llm.image_urls()) == 1
    assert text_of(fake_llm.requests[-1]["messages"][-1]["content"]) == "look"


def test_text_only_messages_still_work_both_ways(eyes: LiveServer) -> None:
    assert eyes.chat("t", "plain").json()["reply"] == "echo: plain"
    form = eyes.client.post("/api/chats/t/messages", data={"text": "as a form"})
    assert form.status_code == 200 and form.json()["reply"] == "echo: as a form"
    assert "images" not in form.json()


# --- refused, nothing stored ---------------------------------------------------------


def _json(images: list[Any], text: str = "look") -> dict[str, Any]:
    return {"json": {"text": text, "images": images}}


def _form(*files: tuple[str, Any], **data: Any) -> dict[str, Any]:
    return {"files": list(files), "data": data}


PNG = png()
BAD = [
    ("json-not-data-url", _json(["http://x/a.png"]), 422, "bad_image", "data URL"),
    ("json-bad-base64", _json(["data:image/png;base64,@@@"]), 422, "bad_image", "base64"),
    (
        "json-not-an-image",
        _json([data_url(b"%PDF-1.7 not a picture")]),
        415,
        "not_an_image",
        "not an image",
    ),
    ("json-corrupt", _json([data_url(PNG[:60])]), 422, "corrupt_image", "could not be read"),
    ("json-too-large", _json([data_url(noise_png())]), 413, "image_too_large", "VIGIL_MAX_IMAGE"),
    (
        "json-second-bad",
        _json([data_url(PNG), data_url(b"nope")]),
        415,
        "not_an_image",
        "image 2 of 2",
    ),
    ("json-too-many", _json([data_url(PNG)] * 3), 413, "too_many_images", "the limit is 2"),
    ("json-images-not-list", _json("data:", "x"), 422, "invalid_request", "images"),  # type: ignore[arg-type]
    ("json-image-not-str", _json([7]), 422, "invalid_request", "images.0"),
    ("json-command", _json([data_url(PNG)], "/reset"), 400, "bad_request", "command"),
    ("json-no-text", {"json": {"user": "x"}}, 422, "invalid_request", "text"),
    ("form-too-many", _form(upload(PNG), upload(PNG), upload(PNG)), 413, "too_many_images", "2"),
    ("form-not-an-image", _form(upload(b"hello", "a.txt")), 415, "not_an_image", "not an image"),
    ("form-corrupt", _form(upload(PNG[:60])), 422, "corrupt_image", "could not be read"),
    ("form-too-large", _form(upload(noise_png())), 413, "image_too_large", "VIGIL_MAX_IMAGE"),
    (
        "form-image-as-field",
        _form(image="data:image/png;base64,AA"),
        422,
        "invalid_request",
        "file",
    ),
    (
        "form-text-as-file",
        _form(("text", ("t.txt", b"hi", "text/plain"))),
        422,
        "invalid_request",
        "text",
    ),
    ("form-unknown-part", _form(upload(PNG), colour="red"), 422, "invalid_request", "colour"),
    (
        "form-two-texts",
        {"files": [upload(PNG)], "data": {"text": ["a", "b"]}},
        422,
        "invalid_request",
        "once",
    ),
    ("form-bad-stream", _form(upload(PNG), stream="maybe"), 422, "invalid_request", "stream"),
    ("form-nothing", _form(user="x"), 422, "invalid_request", "text"),
    ("form-empty-text", _form(text="  "), 400, "text_empty", "empty"),
    ("form-bad-user", _form(upload(PNG), user="a\nb"), 400, "invalid_user", "printable"),
    (
        "form-image-and-audio",
        _form(upload(PNG), ("audio", ("v.ogg", b"OggS", "audio/ogg"))),
        400,
        "bad_request",
        "not both",
    ),
    (
        "form-two-audios",
        _form(("audio", ("v.ogg", b"a", "audio/ogg")), ("audio", ("w.ogg", b"b", "audio/ogg"))),
        400,
        "bad_request",
        "one audio",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code", "words"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_uploads_are_refused_clearly_and_store_nothing(
    eyes: LiveServer,
    fake_llm: FakeLLM,
    request_kwargs: dict[str, Any],
    status: int,
    code: str,
    words: str,
) -> None:
    response = eyes.client.post("/api/chats/bad/messages", **request_kwargs)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code
    assert words in error["message"]
    assert stored(eyes) == (0, 0, [])
    assert not fake_llm.requests


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"content-type": "text/plain"}, b'{"text": "x"}', 415, "unsupported_content_type"),
        ({"content-type": "application/xml"}, b"<text>x</text>", 415, "unsupported_content_type"),
        ({"content-type": "multipart/form-data"}, b"text", 400, "invalid_multipart"),
        (
            {"content-type": "multipart/form-data; boundary=xyz"},
            b"garbage",
            400,
            "invalid_multipart",
        ),
        ({"content-type": "application/json"}, b"", 422, "invalid_request"),
    ],
)
def test_wrong_or_broken_bodies(
    eyes: LiveServer, headers: dict[str, str], content: bytes, status: int, code: str
) -> None:
    response = eyes.client.post("/api/chats/raw/messages", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code
    assert stored(eyes) == (0, 0, [])


def part(name: str, body: bytes, filename: str = "") -> bytes:
    extra = f'; filename="{filename}"\r\nContent-Type: image/png' if filename else ""
    head = f'--xyz\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'
    return head.encode() + body


@pytest.mark.parametrize(
    "content",
    [
        # the image part cut short: its bytes were dropped, the text answered alone
        part("text", b"what is this?\r\n") + part("image", PNG[:50], "a.png"),
        # the whole image sent, the close delimiter never came
        part("text", b"what is this?\r\n") + part("image", PNG + b"\r\n", "a.png"),
        # the text itself never ended (was: 422 "text: is required")
        part("text", b"hello"),
    ],
    ids=["image-cut", "image-unclosed", "text-unclosed"],
)
def test_a_multipart_body_without_its_closing_boundary_is_refused(
    eyes: LiveServer, fake_llm: FakeLLM, content: bytes
) -> None:
    response = eyes.client.post(
        "/api/chats/cut/messages",
        content=content,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["code"] == "invalid_multipart"
    assert "closing boundary" in error["message"]
    assert stored(eyes) == (0, 0, [])
    assert not fake_llm.requests


def test_a_closed_multipart_body_with_an_epilogue_is_read(
    eyes: LiveServer, fake_llm: FakeLLM
) -> None:
    content = part("text", b"what?\r\n") + part("image", PNG + b"\r\n", "a.png")
    content += b"--xyz--\r\nan epilogue, ignored\r\n"
    response = eyes.client.post(
        "/api/chats/closed/messages",
        content=content,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1
    assert len(fake_llm.image_urls()) == 1


def test_a_malformed_multipart_body_is_no_warning_in_the_log(
    eyes: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    response = eyes.client.post(
        "/api/chats/raw/messages",
        content=b"x",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 400, response.text
    assert [r.getMessage() for r in caplog.records if r.name.startswith("python_multipart")] == []


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_for_a_text_only_setup_is_a_422_before_any_stream(
    live_server: LiveServer, fake_llm: FakeLLM, stream: bool
) -> None:
    response = live_server.client.post(
        "/api/chats/blind/messages", files=[upload(PNG)], data={"stream": str(stream).lower()}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert error_of(response)["code"] == "no_vision_model"
    assert "describe it in words" in error_of(response)["message"]
    assert stored(live_server) == (0, 0, [])
    assert not fake_llm.requests


# --- serving images back -------------------------------------------------------------


def test_image_route_refuses_unknown_foreign_and_missing_files(eyes: LiveServer) -> None:
    sent = eyes.client.post("/api/chats/own/messages", files=[upload(PNG)], data={"text": "x"})
    (image,) = sent.json()["images"]
    image_id = image["id"]
    assert eyes.client.get(f"/api/chats/local:own/images/{image_id}").status_code == 200

    for path, status in [
        (f"/api/chats/other/images/{image_id}", 404),  # another chat's image id
        ("/api/chats/own/images/999", 404),
        ("/api/chats/own/images/0", 422),
        ("/api/chats/own/images/abc", 422),
        ("/api/chats/own/images/..%2F..%2Fsystem.db", 404),
        (f"/api/chats/..%2F..%2Fdata/images/{image_id}", 404),
        ("/api/chats/has%20space/images/1", 400),
    ]:
        response = eyes.client.get(path)
        assert response.status_code == status, (path, response.text)
        assert error_of(response)["code"]

    anonymous = httpx.get(eyes.url + image["url"])
    assert anonymous.status_code == 401

    (path,) = list(eyes.settings.media_dir.rglob("*.jpg"))
    path.unlink()  # deleted by hand, or a restore without data/media
    gone = eyes.client.get(image["url"])
    assert gone.status_code == 404
    assert "gone" in error_of(gone)["message"]
