"""The web chat page's image upload in a real Chromium: attach (file picker or
paste), preview and remove, send as multipart, the model sees it, and the image
shows in the history (fetched with the token) after a reload."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import chromium
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # real Chromium


def png(width: int, height: int, color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def file(name: str, data: bytes, mime: str = "image/png") -> dict[str, object]:
    return {"name": name, "mimeType": mime, "buffer": data}


@pytest.fixture
def eyes(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> LiveServer:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, llm_vision_model="fake")
    return live_server_factory(settings)


LOADED = "[...document.querySelectorAll('{0}')].length > 0 && [...document.querySelectorAll('{0}')].every((i) => i.complete && i.naturalWidth > 0)"  # noqa: E501


def test_an_uploaded_image_reaches_the_model_and_shows_in_the_history(
    eyes: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = "A red rectangle."
    with chromium() as browser:
        page = browser.new_page()
        page.goto(eyes.url + "/chat")
        page.fill("#token", eyes.token)
        page.fill("#chat", "pics")
        with page.expect_file_chooser() as chooser:
            page.click("#attach")  # the 📎 button opens the file picker
        chooser.value.set_files(
            [file("red.png", png(120, 80, "red")), file("blue.png", png(50, 50, "blue"))]
        )
        assert page.locator(".attachment img").count() == 2
        page.click(".attachment:nth-child(2) .remove")  # changed my mind about the blue one
        assert page.locator(".attachment img").count() == 1
        page.fill("#text", "what is this?")
        page.press("#text", "Enter")
        page.wait_for_selector(".assistant[data-state=done]")
        assert page.inner_text(".assistant") == "A red rectangle."
        assert page.locator(".attachment").count() == 0  # sent, so cleared
        page.wait_for_function(LOADED.format(".user .images img"))

        (url,) = fake_llm.image_urls()
        seen = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert seen.size == (120, 80)
        assert seen.getpixel((60, 40))[0] > 200  # red, not the removed blue one

        page.reload()  # the history brings the stored image back, fetched with the token
        page.wait_for_selector(".user .images img")
        page.wait_for_function(LOADED.format(".user .images img"))
        size = page.evaluate(
            "(() => { const i = document.querySelector('.user .images img');"
            " return [i.naturalWidth, i.naturalHeight, i.src.slice(0, 5)]; })()"
        )
        assert size == [120, 80, "blob:"]
        assert page.locator(".msg").all_inner_texts()[0].startswith("what is this?")


def test_a_pasted_image_is_sent_without_text(eyes: LiveServer, fake_llm: FakeLLM) -> None:
    data = base64.b64encode(png(64, 48, "green")).decode()
    with chromium() as browser:
        page = browser.new_page()
        page.goto(eyes.url + "/chat")
        page.fill("#token", eyes.token)
        page.fill("#chat", "pasted")
        page.evaluate(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const data = new DataTransfer();
                data.items.add(new File([bytes], "clip.png", {type: "image/png"}));
                const paste = new ClipboardEvent("paste", {clipboardData: data, bubbles: true});
                document.getElementById("text").dispatchEvent(paste);
            }""",
            data,
        )
        assert page.locator(".attachment img").count() == 1
        page.click("#send")
        page.wait_for_selector(".assistant[data-state=done]")
        assert len(fake_llm.image_urls()) == 1
    user = eyes.client.get("/api/chats/pasted/messages", params={"role": "user"}).json()
    (message,) = user["messages"]
    assert message["content"] == "" and message["images"][0]["width"] == 64


def test_a_refused_upload_says_why_and_keeps_the_attachment(
    eyes: LiveServer, fake_llm: FakeLLM
) -> None:
    with chromium() as browser:
        page = browser.new_page()
        page.goto(eyes.url + "/chat")
        page.fill("#token", eyes.token)
        page.set_input_files("#file", files=[file("fake.png", b"not really a picture")])
        page.fill("#text", "look")
        page.click("#send")
        page.wait_for_selector(".error")
        assert "not an image" in page.inner_text(".error")
        assert page.locator(".attachment").count() == 1  # kept, to remove or replace
    assert not fake_llm.requests
