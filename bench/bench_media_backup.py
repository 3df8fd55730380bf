"""Backup, verify and restore time with N stored images; the orphan sweep's time.

    .venv/bin/python bench/bench_media_backup.py [--images 2000] [--side 800]

Each image is a noisy RGB picture re-encoded by ``prepare_image`` (JPEG q85,
so about as big as a photo of that size), stored by ``MediaStore`` with a
message row, in a scratch data directory. Rows:
  * backup with images (``take_backup``: copy, images, gzip, verify) and the
    same backup without them (``create_backup`` with no media root);
  * the next backup with the same images (each one checked, then hard-linked);
  * ``snapshots --verify`` of the snapshot (sha256 + archive members);
  * restore onto an emptied ``data/media`` (every image written back, fsynced);
  * the orphan sweep over the store (no orphans: the walk and the row read).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from core import media_upkeep
from core.backups.backup import create_backup, verify_snapshot
from core.backups.restore import restore_live
from core.backups.runs import take_backup
from core.config import Settings
from core.database import connect_sync, migrate_sync
from core.media import MediaStore, prepare_image


def fill(settings: Settings, images: int, side: int) -> int:
    rng = random.Random(1)
    store = MediaStore(settings.media_dir)
    conn = connect_sync(settings.db_path)
    migrate_sync(conn)
    total = 0
    base = []
    for _ in range(8):  # a few distinct pictures, each stored many times (as files)
        out = io.BytesIO()
        Image.frombytes("RGB", (side, side), rng.randbytes(3 * side * side)).save(out, "PNG")
        base.append(prepare_image(out.getvalue(), max_bytes=50_000_000, max_side=1568))
    conn.execute("BEGIN")
    for n in range(images):
        image = base[n % len(base)]
        path = store.save(f"local:c{n % 20}", image)
        cursor = conn.execute(
            "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
            " VALUES (?, 'user', 'photo', 5, ?)",
            (f"local:c{n % 20}", 1.7e9 + n),
        )
        conn.execute(
            "INSERT INTO message_images (message_id, chat_id, path, mime, bytes, width, height,"
            " caption, created_at) VALUES (?, ?, ?, 'image/jpeg', ?, ?, ?, '', ?)",
            (cursor.lastrowid, f"local:c{n % 20}", path, len(image.data), side, side, 1.7e9 + n),
        )
        total += len(image.data)
    conn.execute("COMMIT")
    conn.close()
    return total


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = fn()
    return round(time.perf_counter() - started, 3), value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=800)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp) / "data", llm_model="x")  # type: ignore[call-arg]
        settings.data_dir.mkdir()
        total = fill(settings, args.images, args.side)
        plain_s, plain = timed(
            lambda: create_backup(settings.db_path, settings.backups_dir, name="plain")
        )
        with_s, snap = timed(lambda: take_backup(settings, trigger="cli", name="with-images"))
        again_s, again = timed(lambda: take_backup(settings, trigger="cli", name="again"))
        verify_s, _ = timed(lambda: verify_snapshot(snap))
        conn = connect_sync(settings.db_path)
        sweep_s, _ = timed(lambda: media_upkeep.sweep_orphans(conn, MediaStore(settings.media_dir)))
        conn.close()
        shutil.rmtree(settings.media_dir)
        restore_s, result = timed(
            lambda: restore_live(
                snap, settings.db_path, confirm=True, media_root=settings.media_dir
            )
        )
        assert result.images is not None and result.images.restored == args.images
        print(
            json.dumps(
                {
                    "images": args.images,
                    "image_mb": round(total / 1e6, 1),
                    "backup_without_images_s": plain_s,
                    "backup_with_images_s": with_s,
                    "images_added_mb": round(snap.files["media"]["size_bytes"] / 1e6, 1),
                    "next_backup_s": again_s,
                    "next_backup_added_mb": round(again.files["media"]["size_bytes"] / 1e6, 3),
                    "db_gz_mb": round(plain.size_bytes / 1e6, 2),
                    "verify_s": verify_s,
                    "restore_s": restore_s,
                    "orphan_sweep_s": sweep_s,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
