"""Snapshot manifests: the file name is the snapshot's name; temp files are swept.

Before the fix the name recorded *inside* ``NAME.json`` located the data file:
after an operator renamed a pair and later took a backup with the old name,
``snapshots`` listed the name twice, ``restore <renamed>`` restored the newer
snapshot, and ``cleanup --keep 1`` deleted the newest snapshot's files while
the renamed manifest stayed. And ``_write_manifest``'s temp file was not a
dot-file, so ``sweep_leftovers`` never removed it after a kill -9.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.backups.backup import create_backup, list_snapshots
from core.backups.temp import sweep_leftovers
from core.config import Settings
from tests.operator_cli import ROOT, fill, invoke, restore_logging, rows  # noqa: F401 (autouse fixture)


def _rename(backups: Path, old: str, new: str) -> None:
    for suffix in (".db.gz", ".json"):
        (backups / f"{old}{suffix}").rename(backups / f"{new}{suffix}")


def _renamed_then_reused(settings: Settings) -> None:
    """'a' (40 messages) renamed by hand to 'old'; then a new 'a' (80 messages)."""
    fill(settings.db_path, 40)
    create_backup(settings.db_path, settings.backups_dir, name="a", now=time.time() - 60)
    _rename(settings.backups_dir, "a", "old")
    fill(settings.db_path, 40, start=2e9)
    create_backup(settings.db_path, settings.backups_dir, name="a")


def test_a_renamed_snapshot_is_listed_and_restored_by_its_file_name(
    tsettings: Settings, tmp_path: Path
) -> None:
    _renamed_then_reused(tsettings)
    listed = json.loads(invoke(tsettings, "snapshots", "--json").stdout)
    assert [(s["name"], s["messages"]) for s in listed] == [("a", 80), ("old", 40)]
    assert listed[1]["manifest_name"] == "a" and "manifest_name" not in listed[0]
    assert listed[1]["path"].endswith("/old.db.gz")
    assert invoke(tsettings, "snapshots", "--verify").exit_code == 0

    target = tmp_path / "old-restored.db"
    done = invoke(tsettings, "restore", "old", "--target-path", str(target), "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["messages"] == 40
    assert rows(target, "SELECT count(*) FROM messages")[0][0] == 40


def test_validate_flags_the_renamed_manifest(tsettings: Settings) -> None:
    _renamed_then_reused(tsettings)
    result = invoke(tsettings, "validate", "--json")
    assert result.exit_code == 0, result.output  # a warning, not a failure
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["snapshot_files"]["status"] == "warn"
    assert "old.json records the name 'a'" in checks["snapshot_files"]["detail"]
    assert checks["backups"]["status"] == "ok"


def test_cleanup_removes_the_renamed_pair_and_keeps_the_newest(tsettings: Settings) -> None:
    _renamed_then_reused(tsettings)
    result = invoke(tsettings, "cleanup", "--keep", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["snapshots_removed"] == ["old"]
    left = sorted(p.name for p in tsettings.backups_dir.iterdir() if p.name != ".backup.lock")
    assert left == ["a.db.gz", "a.json"]
    assert [s.name for s in list_snapshots(tsettings.backups_dir)] == ["a"]
    checks = json.loads(invoke(tsettings, "validate", "--json").stdout)["checks"]
    assert {c["name"]: c["status"] for c in checks}["snapshot_files"] == "ok"


def test_validate_flags_half_pairs(tsettings: Settings) -> None:
    fill(tsettings.db_path, 10)
    for name in ("x", "y"):
        create_backup(tsettings.db_path, tsettings.backups_dir, name=name)
    (tsettings.backups_dir / "x.db.gz").unlink()
    (tsettings.backups_dir / "y.json").unlink()
    old = time.time() - 7200
    os.utime(tsettings.backups_dir / "y.db.gz", (old, old))
    checks = json.loads(invoke(tsettings, "validate", "--json").stdout)["checks"]
    detail = {c["name"]: c for c in checks}["snapshot_files"]
    assert detail["status"] == "warn"
    assert detail["detail"] == "x.json has no x.db.gz (+1 more)"


KILL_IN_MANIFEST_WRITE = """
import os, signal, sys, time
from pathlib import Path
from core.backups import backup

snap = backup.Snapshot("killed", time.time(), "manual", 1, 1, "x", 1, 0, 0, 0.0, Path(sys.argv[1]))
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die with the temp file written
backup._write_manifest(snap)
"""


@pytest.mark.slow
def test_a_manifest_temp_file_left_by_kill_9_is_swept(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_MANIFEST_WRITE, str(backups)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    left = list(backups.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".backup-tmp."), left
    assert list_snapshots(backups) == []
    swept = sweep_leftovers(backups)  # its writer is dead: swept at once
    assert swept.paths == left
    assert [p.name for p in backups.iterdir()] == [".backup.lock"]
