"""Image files go when their rows go: a deleted chat, retention, the orphan sweep.

Real files written by MediaStore, real SQLite, the real CLI and task bodies.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from core.config import Settings
from core.media import folder_of
from main import cli
from tasks import jobs
from tests.conftest import LiveServer
from tests.core.media.stored import contents, make_orphan, store_message
from tests.operator_cli import cli_env, invoke, rows

DAY = 86400.0


def test_deleting_a_chat_removes_its_image_files_after_the_rows(tsettings: Settings) -> None:
    s = tsettings
    gone = store_message(s, "tg:4242", images=2, seed=1) + store_message(s, "tg:4242", seed=2)
    leftover = make_orphan(s, "tg:4242", age_s=0)  # a crash's file in the chat's folder
    kept = store_message(s, "local:other", seed=3)

    dry = invoke(s, "delete", "--chat", "tg:4242", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert (plan["images"], plan["files"]) == (3, 4)
    assert set(contents(s.media_dir)) == {*gone, leftover, *kept}  # a dry run removes nothing

    done = invoke(s, "delete", "--chat", "tg:4242", "--confirm")
    assert done.exit_code == 0, done.output
    assert "3 image(s), 4 file(s)" in done.output
    assert set(contents(s.media_dir)) == set(kept)
    assert not (s.media_dir / folder_of("tg:4242")).exists()  # the emptied folder too
    assert (
        rows(s.db_path, "SELECT count(*) FROM message_images WHERE chat_id = 'tg:4242'")[0][0] == 0
    )
    (audit,) = rows(s.db_path, "SELECT scope, target, messages, files FROM deletions")
    assert tuple(audit) == ("chat", "tg:4242", 2, 4)


def test_deleting_a_users_group_messages_removes_their_images(tsettings: Settings) -> None:
    s = tsettings
    (theirs,) = store_message(s, "tg:-100", seed=1)
    (others,) = store_message(s, "tg:-100", seed=2)
    first = int(rows(s.db_path, "SELECT min(id) FROM messages")[0][0])
    conn = sqlite3.connect(s.db_path, isolation_level=None)
    conn.execute("UPDATE messages SET external_id = '77' WHERE id = ?", (first,))
    conn.execute(
        "INSERT INTO telegram_inbound (chat_id, message_id, sender_id, sent_at, received_at,"
        " status, payload) VALUES (-100, 77, 555, 1, 1, 'answered', '{}')"
    )
    conn.close()
    done = invoke(s, "delete", "--user", "555", "--confirm", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["images"] == 1
    assert set(contents(s.media_dir)) == {others}
    assert theirs not in contents(s.media_dir)


def test_retention_removes_the_images_of_pruned_messages(tsettings: Settings) -> None:
    s = tsettings.model_copy(update={"message_retention_days": 30})
    now = time.time()
    old = store_message(s, "local:a", images=2, created_at=now - 40 * DAY, seed=1)
    new = store_message(s, "local:a", created_at=now - 1 * DAY, seed=2)
    result = jobs.message_retention(s)
    assert result == {"deleted": 1, "images_removed": 2, "days": 30}
    assert set(contents(s.media_dir)) == set(new)
    assert old[0] not in contents(s.media_dir)
    assert int(rows(s.db_path, "SELECT count(*) FROM message_images")[0][0]) == 1


def test_cleanup_command_applies_retention_to_the_images(tsettings: Settings) -> None:
    s = tsettings
    now = time.time()
    store_message(s, "local:a", created_at=now - 40 * DAY, seed=1)
    new = store_message(s, "local:a", created_at=now, seed=2)
    env = {**cli_env(s), "VIGIL_MESSAGE_RETENTION_DAYS": "30"}
    result = CliRunner().invoke(cli, ["cleanup", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["messages_removed"], report["images_removed"]) == (1, 1)
    assert set(contents(s.media_dir)) == set(new)


def test_the_cleanup_job_sweeps_old_orphans_and_reports_rows_without_files(
    filled: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    s = filled
    referenced = store_message(s, "local:a", images=2, seed=1)
    old_orphan = make_orphan(s, "local:a", age_s=2 * 3600, seed=5)
    young_orphan = make_orphan(s, "local:a", age_s=60, seed=6)  # its row may be committing
    part = s.media_dir / folder_of("local:a") / "deadbeef.part"  # a write cut short
    part.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(part, (old, old))
    (s.media_dir / referenced[1]).unlink()  # removed by hand: the row stays, reported

    with caplog.at_level(logging.WARNING, logger="core.media_upkeep"):
        result = jobs.cleanup_old_tasks(s)
    assert result["media_orphans_removed"] == 2
    assert result["media_orphan_bytes"] > 4
    assert result["media_rows_without_file"] == 1
    assert set(contents(s.media_dir)) == {referenced[0], young_orphan}
    assert old_orphan not in contents(s.media_dir) and not part.exists()
    assert "1 stored image(s) have no file" in caplog.text
    assert int(rows(s.db_path, "SELECT count(*) FROM message_images")[0][0]) == 2  # not touched


@pytest.mark.slow
def test_deleting_through_the_running_server_removes_the_files(
    settings: Settings, live_server_factory: Callable[..., LiveServer]
) -> None:
    gone = store_message(settings, "tg:4242", images=2, seed=1)
    kept = store_message(settings, "local:other", seed=2)
    server = live_server_factory(settings)
    dry = server.client.post("/admin/delete", json={"scope": "chat", "target": "tg:4242"})
    assert dry.status_code == 200 and dry.json()["images"] == 2
    assert set(gone) <= set(contents(settings.media_dir))
    done = server.client.post(
        "/admin/delete", json={"scope": "chat", "target": "tg:4242", "confirm": True}
    )
    assert done.status_code == 200, done.text
    assert (done.json()["images"], done.json()["files"]) == (2, 2)
    assert set(contents(settings.media_dir)) == set(kept)
    (audit,) = rows(settings.db_path, "SELECT target, files FROM deletions")
    assert tuple(audit) == ("tg:4242", 2)


def test_a_row_pointing_outside_data_media_never_deletes_that_file(tsettings: Settings) -> None:
    s = tsettings
    store_message(s, "local:a", seed=1)
    outside = s.data_dir / "precious.jpg"
    outside.write_bytes(b"keep me")
    conn = sqlite3.connect(s.db_path, isolation_level=None)
    conn.execute("UPDATE message_images SET path = '../precious.jpg'")
    conn.close()
    done = invoke(s, "delete", "--chat", "local:a", "--confirm")
    assert done.exit_code == 0, done.output
    assert outside.read_bytes() == b"keep me"
