"""A full disk while an image is stored: the turn fails with StorageFull, nothing half-stored.

The disk is really full: the turn runs in a subprocess with its own mount
namespace (``unshare``), where a 32 KiB tmpfs is mounted over ``data/media``
(the database stays on the ordinary disk). Skipped where mount namespaces are
not allowed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Settings
from tests.conftest import make_settings
from tests.fake_llm import FakeLLM
from tests.operator_cli import rows

ROOT = Path(__file__).resolve().parents[3]

TURN = r"""
import asyncio, io, json, os, random, sys
from PIL import Image
from core.api import LocalReply
from core.app import build_runtime
from core.channel import IncomingMessage
from core.config import Settings
from core.database import Database
from core.errors import VigilError
from core.media import prepare_image
from core.models import Models

def noisy(side):
    rng = random.Random(7)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), rng.randbytes(3 * side * side)).save(out, "PNG")
    return prepare_image(out.getvalue(), max_bytes=10_000_000, max_side=1568)

async def main():
    settings = Settings(_env_file=None, **json.loads(sys.argv[1]))
    db = Database(settings.db_path)
    await db.open()
    models = Models.from_settings(settings)
    runtime = build_runtime(settings, db, models.primary, models=models)
    out = {}
    try:
        small = await runtime.chat.handle(
            IncomingMessage("local:p", "hello", user_id="5"), LocalReply()
        )
        out["text_turn"] = small.reply
        try:
            await runtime.chat.handle(
                IncomingMessage("local:p", "what is this?", user_id="5", images=(noisy(400),)),
                LocalReply(),
            )
        except VigilError as exc:
            out["error"] = {"type": type(exc).__name__, **exc.to_dict()}
        out["media_files"] = sorted(
            str(p.relative_to(settings.media_dir)) for p in settings.media_dir.rglob("*")
            if p.is_file()
        )
        out["media_fs_free"] = os.statvfs(settings.media_dir).f_bavail
    finally:
        await models.aclose()
        await db.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _namespaces_allowed(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp / "probe"
    probe.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {probe}"],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


@pytest.mark.slow
def test_a_full_disk_fails_the_image_turn_with_storage_full_and_stores_nothing(
    tmp_path: Path,
) -> None:
    if not _namespaces_allowed(tmp_path):
        pytest.skip("mount namespaces (unshare -rm) are not allowed here: no tiny tmpfs")
    with FakeLLM() as eyes:
        eyes.reply = lambda messages: "I see"
        settings: Settings = make_settings(
            tmp_path,
            llm_models=json.dumps({"eyes": {"base_url": eyes.url, "model": "e", "vision": True}}),
            llm_default="eyes",
        )
        media = settings.media_dir
        media.mkdir(parents=True, mode=0o700)
        values = {
            "data_dir": str(settings.data_dir),
            "logs_dir": str(settings.logs_dir),
            "admin_token": "test-token",
            "llm_models": settings.llm_models,
            "llm_default": "eyes",
            "llm_timeout_s": 5.0,
        }
        script = f'mount -t tmpfs -o size=32k,mode=0700 tmpfs {media} && exec "$0" -c "$1" "$2"'
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c", script, sys.executable, TURN, json.dumps(values)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
        image_requests = eyes.image_urls()

    assert out["text_turn"] == "I see"  # the turn before the image ran normally
    assert out["error"]["type"] == "StorageFull"
    assert out["error"]["code"] == "disk_full"
    assert "the disk is full" in out["error"]["message"]
    assert out["media_files"] == []  # no .part, no .jpg left on the full disk
    assert not image_requests  # the model never saw a half-stored question
    # Nothing half-stored: the image turn left no message row and no image row.
    assert [tuple(r) for r in rows(settings.db_path, "SELECT role, content FROM messages")] == [
        ("user", "hello"),
        ("assistant", "I see"),
    ]
    assert int(rows(settings.db_path, "SELECT count(*) FROM message_images")[0][0]) == 0
    assert list(media.iterdir()) == []  # and outside the namespace, the directory is empty
