"""Messages with real image files: written by MediaStore, rows in a real SQLite file."""

from __future__ import annotations

import io
import os
import random
import stat
from pathlib import Path

from PIL import Image

from core.config import Settings
from core.database import connect_sync, migrate_sync
from core.media import MediaStore, PreparedImage, prepare_image


def noisy_jpeg(seed: int, side: int = 96) -> PreparedImage:
    """A small photo-like image (noise: every one differs, JPEG barely shrinks it)."""
    rng = random.Random(seed)
    image = Image.frombytes(
        "RGB", (side, side), bytes(rng.randrange(256) for _ in range(3 * side * side))
    )
    out = io.BytesIO()
    image.save(out, "PNG")
    return prepare_image(out.getvalue(), max_bytes=10_000_000, max_side=1568)


def store_message(
    settings: Settings,
    chat: str,
    *,
    images: int = 1,
    created_at: float = 1.7e9,
    seed: int = 0,
) -> list[str]:
    """One user message of ``chat`` with ``images`` image files; returns their paths."""
    store = MediaStore(settings.media_dir)
    paths = [store.save(chat, noisy_jpeg(seed * 100 + n)) for n in range(images)]
    conn = connect_sync(settings.db_path)
    try:
        migrate_sync(conn)
        conn.execute("BEGIN IMMEDIATE")
        cursor = conn.execute(
            "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
            " VALUES (?, 'user', ?, 5, ?)",
            (chat, f"look at this {seed}", created_at),
        )
        message_id = cursor.lastrowid
        for path in paths:
            conn.execute(
                "INSERT INTO message_images (message_id, chat_id, path, mime, bytes, width,"
                " height, caption, created_at) VALUES (?, ?, ?, 'image/jpeg', ?, 96, 96, '', ?)",
                (message_id, chat, path, (settings.media_dir / path).stat().st_size, created_at),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return paths


def contents(root: Path) -> dict[str, bytes]:
    """Every image file under ``root``: relative path -> bytes."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def modes(root: Path) -> set[int]:
    """The permission bits of every file and directory under ``root`` (root included)."""
    found = {stat.S_IMODE(os.stat(root).st_mode)}
    for path in root.rglob("*"):
        found.add(stat.S_IMODE(path.stat().st_mode) | (0o1000 if path.is_dir() else 0))
    return found


def make_orphan(settings: Settings, chat: str, *, age_s: float, seed: int = 999) -> str:
    """A file written as a turn would, whose row never committed (a crash), ``age_s`` old."""
    relative = MediaStore(settings.media_dir).save(chat, noisy_jpeg(seed))
    path = settings.media_dir / relative
    old = path.stat().st_mtime - age_s
    os.utime(path, (old, old))
    return relative
