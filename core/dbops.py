"""Database maintenance and data deletion as plain functions of one sqlite3 connection.

The same functions run in two places: inside the server, on its one writer
connection (``Database.run_exclusive``: under the write lock, on the db
thread, so the single-writer invariant holds and chat turns wait rather than
fail), and in the CLI on its own connection when the server is stopped.

Every statement goes through ``run_to_completion`` (a statement left active
on the writer would keep later writes uncommitted). None of them changes the
file's identity: ``VACUUM`` rewrites the pages in place (same inode), unlike
``VACUUM INTO`` + rename, which the database-replaced watch would take for a
restore done by hand.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.database import run_to_completion
from core.errors import BadRequest, NotFound, StorageError
from core.media import MEDIA_DIR, MediaStore, folder_of

log = logging.getLogger(__name__)

OPERATIONS = ("vacuum", "analyze", "reindex", "checkpoint")
CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")
# VACUUM writes a transient copy of the live pages to the temp directory, then
# every page again into the WAL: about twice the database, plus a margin.
VACUUM_SPACE_FACTOR = 2.2


class NotEnoughSpace(StorageError):
    code = "not_enough_space"
    status = 507


def _one(conn: sqlite3.Connection, sql: str) -> Any:
    rows = run_to_completion(conn, sql).rows
    return rows[0][0] if rows else None


def figures(conn: sqlite3.Connection, db_path: Path) -> dict[str, int]:
    """Size, pages, free pages and WAL size: what the maintenance commands report."""
    wal = Path(f"{db_path}-wal")
    return {
        "size_bytes": db_path.stat().st_size,
        "page_size": int(_one(conn, "PRAGMA page_size")),
        "pages": int(_one(conn, "PRAGMA page_count")),
        "freelist_pages": int(_one(conn, "PRAGMA freelist_count")),
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
    }


def temp_dir() -> Path:
    """Where SQLite puts VACUUM's transient database (SQLITE_TMPDIR, TMPDIR, /var/tmp, ...)."""
    for name in ("SQLITE_TMPDIR", "TMPDIR"):
        value = os.environ.get(name)
        if value and Path(value).is_dir():
            return Path(value)
    return Path(tempfile.gettempdir())


def vacuum_space_problem(
    db_bytes: int, data_free: int, temp_free: int, *, same_disk: bool
) -> str | None:
    """Why a VACUUM of ``db_bytes`` must not start with this much free disk (None: it may)."""
    if same_disk:
        need = int(db_bytes * VACUUM_SPACE_FACTOR)
        if data_free < need:
            return (
                f"VACUUM needs about {need / 1e6:.1f} MB free (2.2x the {db_bytes / 1e6:.1f} MB "
                f"database), only {data_free / 1e6:.1f} MB are free; free disk space first"
            )
        return None
    half = int(db_bytes * VACUUM_SPACE_FACTOR / 2)
    if data_free < half:
        return (
            f"VACUUM needs about {half / 1e6:.1f} MB free in the data directory for the WAL, "
            f"only {data_free / 1e6:.1f} MB are free; free disk space first"
        )
    if temp_free < half:
        return (
            f"VACUUM needs about {half / 1e6:.1f} MB free in the temp directory {temp_dir()} "
            f"(set SQLITE_TMPDIR to move it), only {temp_free / 1e6:.1f} MB are free"
        )
    return None


def check_vacuum_space(db_path: Path) -> None:
    """Raise ``NotEnoughSpace`` with the figures when the disk cannot hold a VACUUM."""
    size = db_path.stat().st_size
    tmp = temp_dir()
    same = os.stat(db_path.parent).st_dev == os.stat(tmp).st_dev
    problem = vacuum_space_problem(
        size,
        shutil.disk_usage(db_path.parent).free,
        shutil.disk_usage(tmp).free,
        same_disk=same,
    )
    if problem is not None:
        raise NotEnoughSpace(problem)


def check_operation(operation: str, mode: str = "TRUNCATE") -> str:
    """The operation's name, or a ``BadRequest`` naming the known ones."""
    if operation not in OPERATIONS:
        raise BadRequest(f"unknown operation {operation!r}; known: {', '.join(OPERATIONS)}")
    if mode.upper() not in CHECKPOINT_MODES:
        known = ", ".join(m.lower() for m in CHECKPOINT_MODES)
        raise BadRequest(f"unknown checkpoint mode {mode!r}; known: {known}")
    return operation


def _checkpoint(conn: sqlite3.Connection, mode: str) -> dict[str, int]:
    busy, log_pages, done = run_to_completion(conn, f"PRAGMA wal_checkpoint({mode})").rows[0]
    return {"busy": int(busy), "wal_pages": int(log_pages), "checkpointed": int(done)}


def run_operation(
    conn: sqlite3.Connection, db_path: Path, operation: str, *, mode: str = "TRUNCATE"
) -> dict[str, Any]:
    """Run one maintenance operation; before/after figures and the duration.

    - ``checkpoint``: ``wal_checkpoint(mode)``; ``busy`` = 1 when a reader or
      writer held it back (PASSIVE never waits; TRUNCATE waits up to the busy
      timeout, then reports busy and leaves the WAL for the next one);
    - ``analyze``: ``ANALYZE`` + ``PRAGMA optimize`` (one write transaction);
    - ``reindex``: ``REINDEX`` every index (one write transaction);
    - ``vacuum``: refuses when the disk cannot hold the copy, then ``VACUUM``
      (temp store on disk, not in the server's memory) and a TRUNCATE
      checkpoint so the file on disk shrinks.
    """
    check_operation(operation, mode)
    mode = mode.upper()
    before = figures(conn, db_path)
    started = time.monotonic()
    result: dict[str, Any] = {"operation": operation}
    if operation == "checkpoint":
        result["checkpoint"] = _checkpoint(conn, mode)
        result["mode"] = mode
    elif operation == "analyze":
        run_to_completion(conn, "ANALYZE")
        run_to_completion(conn, "PRAGMA optimize")
    elif operation == "reindex":
        run_to_completion(conn, "REINDEX")
    else:
        check_vacuum_space(db_path)
        store = _one(conn, "PRAGMA temp_store")
        run_to_completion(conn, "PRAGMA temp_store=FILE")  # not a DB-sized heap in the server
        try:
            run_to_completion(conn, "VACUUM")
        finally:
            run_to_completion(conn, f"PRAGMA temp_store={int(store)}")
        result["checkpoint"] = _checkpoint(conn, "TRUNCATE")
    result["duration_s"] = round(time.monotonic() - started, 3)
    result["before"] = before
    result["after"] = figures(conn, db_path)
    return result


# --- data deletion ------------------------------------------------------------------
TELEGRAM_PREFIX = "tg:"
LOCAL_PREFIX = "local:"

# Rows of a deleted chat outside ``messages``/``chats``: (table, condition). The
# condition sees :chat (the stored chat id, "tg:123") and :peer (Telegram's
# numeric id, or NULL for other channels). A table that does not exist yet is
# skipped, so a future table is one line here (e.g. ("usage", "chat_id = :chat")).
CHAT_TABLES: list[tuple[str, str]] = [
    ("telegram_inbound", "chat_id = :peer"),  # payloads hold the message text
    ("telegram_refusals", "chat_id = :peer"),
    ("usage", "chat_id = :chat"),
    ("usage_daily", "chat_id = :chat"),
]
# The same for a Telegram user (:user = the numeric id) in every chat.
USER_TABLES: list[tuple[str, str]] = [
    ("telegram_inbound", "sender_id = :user"),
    ("telegram_refusals", "user_id = :user"),
    ("usage", "user_id = 'tg:' || :user"),
    ("usage_daily", "user_id = 'tg:' || :user"),
]


def chat_media_files(data_dir: Path, chat_id: str) -> list[Path]:
    """Every file in the chat's folder under ``data/media`` (its images, and any
    file a crash left there without a row)."""
    folder = data_dir / MEDIA_DIR / folder_of(chat_id)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() or p.is_symlink())


# Files of a chat under the data directory: functions (data_dir, chat id) -> paths.
CHAT_FILES: list[Callable[[Path, str], list[Path]]] = [chat_media_files]


def chat_id_of(target: str) -> str:
    """A chat id in either form: ``alice`` is ``local:alice``; ``tg:123`` stays."""
    target = target.strip()
    if not target or len(target) > 200 or any(ch in target for ch in "\x00\n\r"):
        raise BadRequest(f"not a chat id: {target[:80]!r}")
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (bytes that were not UTF-8)
        raise BadRequest(f"not a chat id: {target[:80]!r} is not valid UTF-8") from None
    return target if ":" in target else LOCAL_PREFIX + target


def user_id_of(target: str) -> int:
    """A Telegram user id: ``123456`` or ``tg:123456``."""
    text = target.strip().removeprefix(TELEGRAM_PREFIX)
    if not text.isdigit() or len(text) > 19:
        raise BadRequest(
            f"--user takes a Telegram user id (digits, or tg:<digits>), got {target[:80]!r}"
        )
    return int(text)


def _peer(chat_id: str) -> int | None:
    rest = chat_id.removeprefix(TELEGRAM_PREFIX)
    if chat_id.startswith(TELEGRAM_PREFIX) and rest.lstrip("-").isdigit():
        return int(rest)
    return None


@dataclass
class DeletionPlan:
    """What a deletion removes: counted first, so a dry run shows it exactly."""

    scope: str
    target: str
    chats: list[str]  # whole chats removed (messages, summary, chat row)
    message_ids: list[int]  # every message removed (whole chats included)
    summaries_cleared: list[str]  # other chats whose summary may quote removed messages
    rows: dict[str, int]  # other tables: rows removed
    files: list[Path]  # removed after the rows are committed gone
    affected: list[str]  # every chat that loses messages (their cached windows go)
    images: int = 0  # image rows removed with the messages (their files are in ``files``)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "target": self.target,
            "chats": self.chats,
            "messages": len(self.message_ids),
            "summaries_cleared": self.summaries_cleared,
            "rows": self.rows,
            "files": len(self.files),
            "images": self.images,
            "affected": self.affected,
        }

    @property
    def empty(self) -> bool:
        return not (self.chats or self.message_ids or any(self.rows.values()) or self.files)


def _merged(conditions: list[tuple[str, str]]) -> dict[str, str]:
    """One condition per table (a row matching two is counted and deleted once)."""
    merged: dict[str, list[str]] = {}
    for table, where in conditions:
        merged.setdefault(table, []).append(f"({where})")
    return {table: " OR ".join(wheres) for table, wheres in merged.items()}


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = run_to_completion(conn, "SELECT name FROM sqlite_master WHERE type = 'table'").rows
    return {str(r[0]) for r in rows}


def _named(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> list[sqlite3.Row]:
    """``run_to_completion`` for named parameters: stepped to its end, then closed."""
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _count(conn: sqlite3.Connection, table: str, where: str, params: dict[str, Any]) -> int:
    return int(_named(conn, f"SELECT count(*) FROM {table} WHERE {where}", params)[0][0])


def plan_deletion(
    conn: sqlite3.Connection, scope: str, target: str, *, data_dir: Path
) -> DeletionPlan:
    """Find everything ``scope`` ('chat' or 'user') ``target`` covers (reads only)."""
    tables = _tables(conn)
    if scope == "chat":
        chat = chat_id_of(target)
        params: dict[str, Any] = {"chat": chat, "peer": _peer(chat)}
        extra = CHAT_TABLES
        known = run_to_completion(conn, "SELECT 1 FROM chats WHERE id = ?", (chat,)).rows
        chats = [chat] if known else []
        ids = [
            int(r[0])
            for r in run_to_completion(
                conn, "SELECT id FROM messages WHERE chat_id = ? ORDER BY id", (chat,)
            ).rows
        ]
        cleared: list[str] = []
        affected = [chat]
        label = chat
    elif scope == "user":
        user = user_id_of(target)
        private = f"{TELEGRAM_PREFIX}{user}"  # a private chat's id is the user's id
        params = {"user": user, "chat": private, "peer": user}
        extra = [*USER_TABLES, *CHAT_TABLES]
        known = run_to_completion(conn, "SELECT 1 FROM chats WHERE id = ?", (private,)).rows
        chats = [private] if known else []
        ids_set = {
            int(r[0])
            for r in run_to_completion(
                conn, "SELECT id FROM messages WHERE chat_id = ?", (private,)
            ).rows
        }
        # In groups: the user's own messages, found through the inbound ledger
        # (it keeps the sender of every message for 30 days).
        grouped = run_to_completion(
            conn,
            "SELECT m.id, m.chat_id FROM telegram_inbound t JOIN messages m"
            " ON m.chat_id = 'tg:' || t.chat_id AND m.external_id = CAST(t.message_id AS TEXT)"
            " AND m.role = 'user' WHERE t.sender_id = ? AND t.chat_id != ?",
            (user, user),
        ).rows
        touched: dict[str, int] = {}
        for row in grouped:
            ids_set.add(int(row[0]))
            touched[str(row[1])] = min(int(row[0]), touched.get(str(row[1]), int(row[0])))
        ids = sorted(ids_set)
        cleared = []
        for chat_id, first in sorted(touched.items()):
            folded = run_to_completion(
                conn,
                "SELECT 1 FROM chats WHERE id = ? AND summary != '' AND summary_upto_id >= ?",
                (chat_id, first),
            ).rows
            if folded:
                cleared.append(chat_id)
        affected = sorted({*chats, *touched})
        label = str(user)
    else:
        raise BadRequest(f"scope must be 'chat' or 'user', got {scope!r}")
    rows = {
        table: _count(conn, table, where, params)
        for table, where in _merged(extra).items()
        if table in tables
    }
    files = [f for chat in chats for find in CHAT_FILES for f in find(data_dir, chat)]
    images = _image_paths(conn, ids, tables)
    store = MediaStore(data_dir / MEDIA_DIR)
    inside = [store.path_of(p) for p in images if _inside(store, p)]  # never outside the store
    files = list(dict.fromkeys([*files, *inside]))
    return DeletionPlan(scope, label, chats, ids, cleared, rows, files, affected, len(images))


def _inside(store: MediaStore, relative: str) -> bool:
    try:
        store.path_of(relative)
    except ValueError:
        log.warning("deletion: ignoring the image path %r (outside data/media)", relative)
        return False
    return True


def _image_paths(conn: sqlite3.Connection, ids: list[int], tables: set[str]) -> list[str]:
    """The image files of these messages (their rows go with them by cascade)."""
    if "message_images" not in tables:
        return []
    paths: list[str] = []
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        marks = ",".join("?" * len(batch))
        found = run_to_completion(
            conn,
            f"SELECT path FROM message_images WHERE message_id IN ({marks}) ORDER BY id",
            batch,
        ).rows
        paths.extend(str(r[0]) for r in found)
    return paths


def delete_data(
    conn: sqlite3.Connection,
    scope: str,
    target: str,
    *,
    data_dir: Path,
    db_path: Path,
    by: str,
    vacuum: bool = True,
) -> dict[str, Any]:
    """Delete what ``plan_deletion`` finds, leaving no copy of it in the files.

    - ``secure_delete`` on: SQLite zeroes what it deletes;
    - one transaction removes the messages (the FTS trigger removes their
      index entries), the chat rows, the other tables' rows, and records the
      deletion (who and when, counts; never what);
    - the FTS index is merged into one segment (``optimize``): older segments
      that still held the words are freed (and zeroed);
    - ``VACUUM`` (when the disk allows; ``vacuum=False`` skips it) rewrites the
      file from live rows only: free pages left by earlier writes can hold
      copies of old rows (a summary's previous text, merged index segments);
    - a TRUNCATE checkpoint empties the WAL, which held the pages before.
    """
    plan = plan_deletion(conn, scope, target, data_dir=data_dir)
    if plan.empty:
        what = "chat" if scope == "chat" else "Telegram user"
        shown = chat_id_of(target) if scope == "chat" else plan.target
        raise NotFound(f"nothing stored for {what} {shown!r}")
    started = time.monotonic()
    secure = _one(conn, "PRAGMA secure_delete")
    run_to_completion(conn, "PRAGMA secure_delete=ON")
    try:
        _delete_rows(conn, plan, by)
        run_to_completion(conn, "INSERT INTO messages_fts (messages_fts) VALUES ('optimize')")
        vacuumed: str
        if vacuum:
            try:
                check_vacuum_space(db_path)
            except NotEnoughSpace as exc:
                vacuumed = f"skipped: {exc.message}"
            else:
                store = _one(conn, "PRAGMA temp_store")
                run_to_completion(conn, "PRAGMA temp_store=FILE")
                try:
                    run_to_completion(conn, "VACUUM")
                finally:
                    run_to_completion(conn, f"PRAGMA temp_store={int(store)}")
                vacuumed = "done"
        else:
            vacuumed = "skipped (--no-vacuum)"
        checkpoint = _checkpoint(conn, "TRUNCATE")
    finally:
        run_to_completion(conn, f"PRAGMA secure_delete={int(secure)}")
    _remove_files(plan.files, data_dir / MEDIA_DIR)
    result = plan.to_dict()
    result.update(
        {
            "vacuum": vacuumed,
            "checkpoint": checkpoint,
            "duration_s": round(time.monotonic() - started, 3),
        }
    )
    return result


def _remove_files(files: list[Path], media_root: Path) -> None:
    """The files of deleted rows (committed gone by now), then emptied media folders."""
    failed = 0
    for path in files:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            failed += 1
            log.warning("deletion: %s could not be removed: %s", path, exc)
    root = media_root.resolve()
    for folder in sorted({p.parent for p in files}):
        if folder.parent.resolve() == root:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    if failed:
        log.warning("deletion: %d file(s) left; the media orphan sweep retries them", failed)


def _delete_rows(conn: sqlite3.Connection, plan: DeletionPlan, by: str) -> None:
    tables = _tables(conn)
    if plan.scope == "chat":
        params: dict[str, Any] = {"chat": plan.chats[0] if plan.chats else plan.target}
        params["peer"] = _peer(params["chat"])
        extra = CHAT_TABLES
    else:
        user = int(plan.target)
        params = {"user": user, "chat": f"{TELEGRAM_PREFIX}{user}", "peer": user}
        extra = [*USER_TABLES, *CHAT_TABLES]

    run_to_completion(conn, "BEGIN IMMEDIATE")
    try:
        for start in range(0, len(plan.message_ids), 500):
            batch = plan.message_ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            run_to_completion(conn, f"DELETE FROM messages WHERE id IN ({marks})", batch)
        for chat in plan.chats:
            run_to_completion(conn, "DELETE FROM chats WHERE id = ?", (chat,))
        for chat in plan.summaries_cleared:
            run_to_completion(conn, "UPDATE chats SET summary = '' WHERE id = ?", (chat,))
        for table, where in _merged(extra).items():
            if table in tables:
                _named(conn, f"DELETE FROM {table} WHERE {where}", params)
        run_to_completion(
            conn,
            "INSERT INTO deletions (deleted_at, deleted_by, scope, target, messages, files)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                by[:200],
                plan.scope,
                plan.target,
                len(plan.message_ids),
                len(plan.files),
            ),
        )
        run_to_completion(conn, "COMMIT")
    except BaseException:
        if conn.in_transaction:
            run_to_completion(conn, "ROLLBACK")
        raise
