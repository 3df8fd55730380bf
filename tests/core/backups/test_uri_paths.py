"""Read-only SQLite opens work in a data dir whose path holds '#', '?' or '%'.

Read-only connections go through a ``file:`` URI; built by string formatting,
'#' starts a fragment and '?' a query, so SQLite opened (and created!) a
truncated path: ``backup`` failed with "no such table: messages", ``validate``
reported schema version 0, and a stray empty file appeared next to the dir.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from core.backups.backup import create_backup, integrity_problems, readonly_uri
from core.backups.integrity import validate_database
from core.backups.restore import restore_to_file
from core.config import Settings
from core.schema import SCHEMA_VERSION
from tests.conftest import make_settings
from tests.fake_llm import dead_url
from tests.operator_cli import fill, run_cli

ODD = "hash#dir?q=1%20x"


@pytest.fixture
def odd(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path / ODD, llm_base_url=dead_url())
    fill(settings.db_path, 40)
    return settings


def _strays(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != ODD)


def test_readonly_uri_percent_encodes_the_path(tmp_path: Path) -> None:
    uri = readonly_uri(tmp_path / ODD / "system.db")
    assert uri.startswith("file:///") and uri.endswith("/system.db?mode=ro")
    assert "hash%23dir%3Fq%3D1%2520x" in uri


@pytest.mark.slow
def test_backup_and_validate_cli_in_a_dir_with_hash_and_question_mark(
    odd: Settings, tmp_path: Path
) -> None:
    made = run_cli(odd, "backup", "--name", "odd", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["messages"] == 40
    checked = run_cli(odd, "validate", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    details = {c["name"]: c["detail"] for c in report["checks"]}
    assert details["schema"] == f"schema version {SCHEMA_VERSION}"
    assert report["ok"] is True
    assert _strays(tmp_path) == []  # nothing created at the truncated path


def test_library_checks_and_restore_in_such_a_dir(odd: Settings, tmp_path: Path) -> None:
    snap = create_backup(odd.db_path, odd.backups_dir, name="lib")
    assert snap.messages == 40
    assert integrity_problems(odd.db_path) == []
    statuses = {c.name: c.status for c in validate_database(odd.db_path)}
    assert statuses["schema"] == "ok" and statuses["fts"] == "ok"
    target = odd.data_dir / "restored#copy?.db"
    assert restore_to_file(snap, target).messages == 40
    conn = sqlite3.connect(target)
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 40
    conn.close()
    assert _strays(tmp_path) == []
