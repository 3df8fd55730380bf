"""What one image costs core.media.prepare_image at its worst, and what a prompt
over 500 image turns costs.

Each input is built in memory and prepared in a fresh Python process (so the
peak RSS is that image's alone): CPU is user+system time of the call, peak is
VmHWM after it, "above" is the peak minus the process before the call
(interpreter, Pillow and the input already loaded).

    .venv/bin/python bench/bench_media.py            # the table
    .venv/bin/python bench/bench_media.py --prompt   # plus the 500-turn prompt
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time
from core.media import prepare_image
def hwm():  # this process's peak RSS in MB (VmHWM; ru_maxrss survives exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
data = open(sys.argv[1], "rb").read()
start = hwm()
before = resource.getrusage(resource.RUSAGE_SELF)
wall = time.perf_counter()
try:
    out = prepare_image(data, max_bytes=10_485_760, max_side=1568)
    result = f"ok {out.width}x{out.height}"
except Exception as exc:
    result = f"{type(exc).__name__}"
wall = time.perf_counter() - wall
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
    "wall": wall, "peak": hwm(), "above": hwm() - start, "result": result}))
"""


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    g = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGBA", (g, g.transpose(Image.Transpose.FLIP_LEFT_RIGHT), g, g))


def noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def progressive_scans(count: int) -> bytes:
    data = encode(Image.new("RGB", (3400, 3400)), "JPEG", progressive=True)
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * count + b"\xff\xd9"


CASES: dict[str, Callable[[], bytes]] = {
    "PNG RGBA 4000x3000 (at the cap)": lambda: encode(gradient(4000, 3000), "PNG"),
    "PNG 16-bit grey 4000x3000": lambda: encode(
        gradient(4000, 3000).getchannel(0).convert("I;16"), "PNG"
    ),
    "TIFF deflate RGBA 4000x3000": lambda: encode(
        gradient(4000, 3000), "TIFF", compression="tiff_deflate"
    ),
    "GIF 4000x3000": lambda: encode(gradient(4000, 3000).convert("P"), "GIF"),
    "WebP lossy 3000x2000 (at the cap)": lambda: encode(
        gradient(3000, 2000).convert("RGB"), "WEBP"
    ),
    "progressive CMYK JPEG 4000x3000": lambda: encode(
        gradient(4000, 3000).convert("CMYK"), "JPEG", progressive=True
    ),
    "baseline JPEG 8000x8000 noise (10 MB)": lambda: encode(noise(8000, 8000), "JPEG", quality=8),
    "PNG noise 10 MB": lambda: encode(noise(1850, 1800), "PNG"),
    "PNG RGBA 7999x7999 (refused)": lambda: encode(Image.new("RGBA", (7999, 7999)), "PNG"),
    "WebP 7999x7999 (refused)": lambda: encode(Image.new("RGBA", (7999, 7999)), "WEBP"),
    "JPEG of 20,000 scans (refused)": lambda: progressive_scans(20_000),
    "TIFF 64x64 in one 16384 px tile (refused)": lambda: _tests().tiled_tiff(64, 16384),
    "RLE8 BMP 3400x3400 (refused)": lambda: _tests().rle_bmp(3400, bits=8),
    "JPEG of 2.5 M empty comments (refused)": lambda: _tests().countless("JPEG", 2_490_000),
    "PNG of 830 K empty chunks (refused)": lambda: _tests().countless("PNG", 830_000),
    "GIF of 5 M comment blocks (refused)": lambda: _tests().countless("GIF", 4_990_000),
    "TIFF of 1 M strips (refused)": lambda: _tests().striped_tiff(1_000_000),
}


def _tests():  # type: ignore[no-untyped-def]
    """The hand-built files of the attack tests."""
    import tests.core.media.test_media_attack_prepare as built

    return built


def run_case(name: str, data: bytes, folder: Path) -> dict[str, object]:
    path = folder / "input"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode:
        return {"name": name, "error": done.stderr.strip().splitlines()[-1]}
    return {"name": name, "bytes": len(data), **json.loads(done.stdout)}


async def prompt_figures(turns: int = 500) -> str:
    from core.app import build_runtime
    from core.database import Database
    from core.media import StoredImage, image_tokens, prepare_image
    from core.models import Models
    from tests.conftest import make_settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(Path(tmp), llm_vision_model="fake")
        db = Database(settings.db_path)
        await db.open()
        models = Models.from_settings(settings)
        runtime = build_runtime(settings, db, models.primary, models=models)
        media = runtime.chat.media
        assert media is not None
        prepared = prepare_image(
            encode(Image.new("RGB", (800, 600), "blue"), "PNG"), max_bytes=10**7, max_side=1568
        )
        for n in range(turns):
            path = media.save("local:b", prepared)
            stored = StoredImage(path, prepared.width, prepared.height, f"photo {n}")
            tokens = 3 + image_tokens(prepared.width, prepared.height)
            await runtime.memory.append(
                "local:b", "user", f"photo {n}", tokens=tokens, images=[stored]
            )
            await runtime.memory.append("local:b", "assistant", f"a blue picture ({n})")
        times = []
        for _ in range(20):
            runtime.memory._windows.clear()  # cold: the window is read from SQLite again
            started = time.perf_counter()
            prompt = await runtime.chat.context.build("local:b")
            times.append(time.perf_counter() - started)
        warm = []
        for _ in range(20):
            started = time.perf_counter()
            await runtime.chat.context.build("local:b")
            warm.append(time.perf_counter() - started)
        await models.aclose()
        await db.close()
    times.sort()
    warm.sort()
    return (
        f"prompt over {turns} image turns: {len(prompt.messages)} messages, "
        f"{prompt.images} pictures; cold (window from SQLite) median "
        f"{times[len(times) // 2] * 1000:.1f} ms, warm median {warm[len(warm) // 2] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", action="store_true", help="also time the 500-turn prompt")
    args = parser.parse_args()
    print("| input | file | CPU (s) | wall (s) | peak RSS (MB) | above start (MB) | result |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in CASES.items():
            row = run_case(name, make(), Path(tmp))
            if "error" in row:
                print(f"| {name} | | | | | | {row['error']} |")
                continue
            print(
                f"| {name} | {int(row['bytes']) / 1_048_576:.2f} MB | {row['cpu']:.2f} "  # type: ignore[call-overload]
                f"| {row['wall']:.2f} | {row['peak']:.0f} | {row['above']:.0f} | {row['result']} |"
            )
    if args.prompt:
        print(asyncio.run(prompt_figures()))


if __name__ == "__main__":
    main()
