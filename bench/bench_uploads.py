"""Memory of image uploads to the local API, one at a time and many at once.

Run: ``.venv/bin/python bench/bench_uploads.py [--clients 1,2,8] [--kind bytes|canvas]
[--multipart]``

A real ``main.py serve`` process (a vision profile on the fake model server).
Each client POSTs one message with ``VIGIL_MAX_IMAGES_PER_MESSAGE`` (4) images
as JSON data URLs:

- ``bytes``: each image a ~9.5 MB PNG of noise (the body is ~51 MB, near the
  route's limit): what the body and its decoding cost;
(``--multipart``: the same images as ``image`` files instead), and

- ``canvas``: each image a small PNG of a ``--side`` square canvas (default
  3400 px, 11.6 megapixels: under the decode limit), what Pillow's decoded
  canvas costs.

Reported per run: the server's RSS before, its peak (sampled every 20 ms from
``/proc``) and after; how many uploads were answered 200 and how many 429 (the
upload gate: at most 2 large bodies read and decoded at once, the rest wait up
to 10 s).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from PIL import Image

from tests.fake_llm import FakeLLM
from tests.processes import AUTH, vigil, vigil_env


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def image(kind: str, seed: int, side: int = 3400) -> bytes:
    out = io.BytesIO()
    if kind == "bytes":
        side = 1780
        Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
            out, "PNG", compress_level=0
        )
    else:
        Image.new("RGB", (side, side), (seed * 40 % 256, 90, 200)).save(out, "PNG")
    return out.getvalue()


def body(kind: str, side: int) -> bytes:
    urls = [
        '"data:image/png;base64,' + base64.b64encode(image(kind, i, side)).decode() + '"'
        for i in range(4)
    ]
    return ('{"text": "what are these?", "images": [' + ",".join(urls) + "]}").encode()


def form(kind: str, side: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.png", image(kind, i, side), "image/png")) for i in range(4)]


def run(url: str, pid: int, payload: bytes | list, clients: int) -> dict[str, object]:
    before = rss_mb(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.02)

    def post(n: int) -> int:
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client:
            path = f"/api/chats/bench{n}/messages"
            if isinstance(payload, list):  # multipart
                response = client.post(path, files=payload, data={"text": "what are these?"})
            else:
                response = client.post(
                    path, content=payload, headers={"content-type": "application/json"}
                )
            return response.status_code

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(post, range(clients)))
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    return {
        "clients": clients,
        "body_mb": round(
            (sum(len(p[1][1]) for p in payload) if isinstance(payload, list) else len(payload))
            / 1_048_576,
            1,
        ),
        "rss_before_mb": round(before),
        "rss_peak_mb": round(peak),
        "rss_after_mb": round(rss_mb(pid)),
        "ok": statuses.count(200),
        "busy_429": statuses.count(429),
        "other": [s for s in statuses if s not in (200, 429)],
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="1,2,8")
    parser.add_argument("--kind", choices=("bytes", "canvas"), default="bytes")
    parser.add_argument("--multipart", action="store_true", help="image files, not data URLs")
    parser.add_argument("--side", type=int, default=3400, help="canvas: width = height, px")
    args = parser.parse_args()
    shaped = form if args.multipart else body
    payload: bytes | list = shaped(args.kind, args.side)
    with tempfile.TemporaryDirectory() as tmp, FakeLLM() as llm:
        env = vigil_env(Path(tmp), llm.url, llm_vision_model="fake", log_level="WARNING")
        with vigil(Path(tmp), env, "serve") as server:
            pid = server.wait_live()["pid"]
            for clients in [int(c) for c in args.clients.split(",")]:
                shape = "multipart" if args.multipart else "json"
                print(args.kind, shape, run(server.url, pid, payload, clients), flush=True)


if __name__ == "__main__":
    main()
