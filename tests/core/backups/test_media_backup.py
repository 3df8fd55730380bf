"""Snapshots hold the images their database refers to; restore brings them back.

Real image files written by MediaStore, real SQLite files, real tar archives.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from core.backups.backup import (
    Snapshot,
    SnapshotDamaged,
    create_backup,
    find_snapshot,
    verify_snapshot,
)
from core.backups.media import SUFFIX
from core.backups.restore import restore_live
from core.backups.runs import take_backup
from core.config import Settings
from tests.core.media.stored import contents, make_orphan, modes, store_message
from tests.operator_cli import invoke, rows


def _backup(settings: Settings, name: str = "snap") -> Snapshot:
    return take_backup(settings, trigger="cli", name=name)


def test_backup_wipe_restore_brings_the_images_back_byte_identical_and_private(
    tsettings: Settings,
) -> None:
    s = tsettings
    kept = store_message(s, "local:a", images=2, seed=1) + store_message(s, "tg:7", seed=2)
    orphan = make_orphan(s, "local:a", age_s=0)  # no row refers to it: not in the snapshot
    before = contents(s.media_dir)
    snap = take_backup(s, trigger="cli", name="with-images")

    entry = snap.files["media"]
    assert entry["images"] == 3 and entry["missing"] == 0
    assert entry["file"] == "with-images" + SUFFIX
    assert snap.extra_path("media").stat().st_mode & 0o077 == 0
    with tarfile.open(snap.extra_path("media")) as tar:
        assert sorted(tar.getnames()) == sorted(kept)
    manifest = json.loads(snap.manifest_path.read_text())
    assert manifest["files"]["media"]["sha256"] == entry["sha256"]

    shutil.rmtree(s.media_dir)  # the disk is wiped: database and images
    s.db_path.unlink()
    result = restore_live(snap, s.db_path, confirm=True, media_root=s.media_dir)

    assert contents(s.media_dir) == {p: before[p] for p in kept}  # byte-identical, no orphan
    assert orphan not in contents(s.media_dir)
    assert modes(s.media_dir) == {0o700, 0o1700, 0o600}  # dirs 0700, files 0600
    assert result.images is not None
    assert (result.images.restored, result.images.set_aside, result.images.missing) == (3, 0, 0)
    assert int(rows(s.db_path, "SELECT count(*) FROM message_images")[0][0]) == 3


def test_restore_moves_the_replaced_databases_images_aside(tsettings: Settings) -> None:
    s = tsettings
    old = store_message(s, "local:a", seed=1)
    snap = _backup(s)
    newer = store_message(s, "local:a", seed=2)  # after the snapshot: not in the restored db
    orphan = make_orphan(s, "local:b", age_s=0)
    result = restore_live(snap, s.db_path, confirm=True, media_root=s.media_dir, now=1e9)

    assert set(contents(s.media_dir)) == set(old)  # nothing the restored db does not refer to
    assert result.images is not None and result.images.set_aside == 2
    aside = Path(result.images.aside)
    assert aside.name == "media.before-restore-20010909-014640"
    assert set(contents(aside)) == {*newer, orphan}  # kept with the kept-aside database
    assert result.images.unchanged == 1 and result.images.restored == 0
    assert modes(aside) <= {0o700, 0o1700, 0o600}


def test_a_snapshot_without_images_restores_and_keeps_the_referenced_files(
    tsettings: Settings,
) -> None:
    """Snapshots made before images were archived: no ``media`` entry in the manifest."""
    s = tsettings
    referenced = store_message(s, "local:a", seed=1)
    snap = create_backup(s.db_path, s.backups_dir, name="old-style")  # no media_root
    assert "media" not in snap.files
    later = store_message(s, "local:a", seed=2)
    result = restore_live(snap, s.db_path, confirm=True, media_root=s.media_dir)
    assert set(contents(s.media_dir)) == set(referenced)
    assert result.images is not None and result.images.set_aside == len(later)


def test_a_row_whose_file_vanished_before_the_backup_is_counted_missing(
    tsettings: Settings,
) -> None:
    s = tsettings
    (gone,) = store_message(s, "local:a", seed=1)
    (s.media_dir / gone).unlink()
    store_message(s, "local:a", seed=2)
    snap = _backup(s)
    assert snap.files["media"]["images"] == 1 and snap.files["media"]["missing"] == 1
    result = restore_live(snap, s.db_path, confirm=True, media_root=s.media_dir)
    assert result.images is not None and result.images.missing == 1


def test_no_images_means_no_archive(tsettings: Settings) -> None:
    store_message(tsettings, "local:a", images=0)
    snap = _backup(tsettings)
    assert "media" not in snap.files


def test_verify_detects_a_damaged_or_swapped_image_archive(tsettings: Settings) -> None:
    s = tsettings
    store_message(s, "local:a", images=2, seed=1)
    snap = take_backup(s, trigger="cli", name="v")
    verify_snapshot(snap)
    archive = snap.extra_path("media")
    data = bytearray(archive.read_bytes())
    data[700] ^= 0xFF  # one flipped byte inside the first image
    archive.write_bytes(bytes(data))
    with pytest.raises(SnapshotDamaged, match="checksum mismatch of its media file"):
        verify_snapshot(snap)
    archive.unlink()
    with pytest.raises(SnapshotDamaged, match="media file"):
        verify_snapshot(snap)


def test_a_restore_refuses_an_archive_with_foreign_members(tsettings: Settings) -> None:
    """An archive rebuilt by hand (checksum updated) still may not write outside data/media."""
    s = tsettings
    store_message(s, "local:a", seed=1)
    snap = take_backup(s, trigger="cli", name="evil")
    archive = snap.extra_path("media")
    evil = s.data_dir / "evil.jpg"
    evil.write_bytes(b"x")
    with tarfile.open(archive, "w") as tar:
        tar.add(evil, arcname="../../escaped.jpg")
    manifest = json.loads(snap.manifest_path.read_text())
    manifest["files"]["media"]["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    manifest["files"]["media"]["images"] = 1
    snap.manifest_path.write_text(json.dumps(manifest))
    again = find_snapshot(s.backups_dir, "evil")
    with pytest.raises(SnapshotDamaged, match="unexpected member"):
        restore_live(again, s.db_path, confirm=True, media_root=s.media_dir)
    assert not (s.data_dir.parent / "escaped.jpg").exists()


def test_the_cli_backs_up_and_restores_the_images(tsettings: Settings) -> None:
    s = tsettings
    kept = store_message(s, "local:a", images=2, seed=1)
    before = contents(s.media_dir)
    made = invoke(s, "backup", "--name", "cli-snap")
    assert made.exit_code == 0, made.output
    assert "images: 2 (" in made.output and "cli-snap.media.tar" in made.output
    newer = store_message(s, "local:a", seed=2)

    for path in kept:
        (s.media_dir / path).unlink()  # the disk lost the snapshot's images
    done = invoke(s, "restore", "cli-snap", "--confirm", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["images"]["restored"] == 2 and report["images"]["set_aside"] == 1
    assert contents(s.media_dir) == before
    assert set(contents(Path(report["images"]["aside"]))) == set(newer)
    checked = invoke(s, "validate", "--json")
    permissions = next(
        c for c in json.loads(checked.output)["checks"] if c["name"] == "permissions"
    )
    assert permissions["status"] == "ok", permissions


def test_validate_flags_an_image_readable_by_others(tsettings: Settings) -> None:
    s = tsettings
    (path,) = store_message(s, "local:a", seed=1)
    (s.media_dir / path).chmod(0o644)
    checked = invoke(s, "validate", "--json")
    permissions = next(
        c for c in json.loads(checked.output)["checks"] if c["name"] == "permissions"
    )
    assert permissions["status"] == "fail" and path in permissions["detail"]
