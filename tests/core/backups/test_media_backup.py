"""Snapshots hold the images their database refers to; restore brings them back.

Real image files written by MediaStore, real SQLite files, real hard links.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from core.backups.backup import (
    Snapshot,
    SnapshotDamaged,
    create_backup,
    delete_snapshot,
    find_snapshot,
    verify_snapshot,
)
from core.backups.media import INDEX, SUFFIX, read_index
from core.backups.restore import restore_live
from core.backups.runs import take_backup
from core.backups.temp import sweep_leftovers, temp_path
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
    assert sorted(read_index(snap.extra_path("media"))) == sorted(kept)
    assert modes(snap.extra_path("media")) == {0o700, 0o1700, 0o600}
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


def test_verify_detects_a_damaged_image_or_index(tsettings: Settings) -> None:
    s = tsettings
    _first, second = store_message(s, "local:a", images=2, seed=1)
    snap = take_backup(s, trigger="cli", name="v")
    verify_snapshot(snap)
    image = snap.extra_path("media") / second
    data = bytearray(image.read_bytes())
    data[700] ^= 0xFF  # one flipped byte inside an image
    image.write_bytes(bytes(data))
    with pytest.raises(SnapshotDamaged, match=f"checksum mismatch of the image {second}"):
        verify_snapshot(snap)
    image.unlink()
    with pytest.raises(SnapshotDamaged, match=f"the image {second} cannot be read"):
        verify_snapshot(snap)
    (snap.extra_path("media") / INDEX).write_text("")
    with pytest.raises(SnapshotDamaged, match=f"checksum mismatch of its {INDEX}"):
        verify_snapshot(snap)


def test_a_restore_refuses_an_index_naming_paths_outside_the_store(tsettings: Settings) -> None:
    """An index rebuilt by hand (checksum updated) still may not write outside data/media."""
    s = tsettings
    store_message(s, "local:a", seed=1)
    snap = take_backup(s, trigger="cli", name="evil")
    index = snap.extra_path("media") / INDEX
    index.write_text(f"../../escaped.jpg\t1\t{'0' * 64}\n")
    manifest = json.loads(snap.manifest_path.read_text())
    manifest["files"]["media"]["sha256"] = hashlib.sha256(index.read_bytes()).hexdigest()
    snap.manifest_path.write_text(json.dumps(manifest))
    again = find_snapshot(s.backups_dir, "evil")
    with pytest.raises(SnapshotDamaged, match="unreadable index"):
        restore_live(again, s.db_path, confirm=True, media_root=s.media_dir)
    assert not (s.data_dir.parent / "escaped.jpg").exists()


def test_snapshots_share_unchanged_images_through_hard_links(tsettings: Settings) -> None:
    s = tsettings
    (old,) = store_message(s, "local:a", seed=1)
    first = take_backup(s, trigger="cli", name="first")
    (new,) = store_message(s, "local:a", seed=2)
    second = take_backup(s, trigger="cli", name="second")
    a, b = first.extra_path("media") / old, second.extra_path("media") / old
    assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink == 2  # one copy on disk
    new_size = (s.media_dir / new).stat().st_size
    assert second.files["media"]["image_bytes"] == a.stat().st_size + new_size
    assert second.files["media"]["size_bytes"] < new_size + 1000  # only the new image + index
    delete_snapshot(first)  # the other snapshot keeps its images whole
    assert not first.extra_path("media").exists()
    verify_snapshot(second)
    shutil.rmtree(s.media_dir)
    result = restore_live(second, s.db_path, confirm=True, media_root=s.media_dir)
    assert result.images is not None and result.images.restored == 2


def test_a_damaged_image_in_the_previous_snapshot_is_copied_afresh(tsettings: Settings) -> None:
    s = tsettings
    (path,) = store_message(s, "local:a", seed=1)
    first = take_backup(s, trigger="cli", name="first")
    damaged = first.extra_path("media") / path
    damaged.write_bytes(b"rot" + damaged.read_bytes()[3:])
    second = take_backup(s, trigger="cli", name="second")  # verifies, so it is not damaged
    assert (second.extra_path("media") / path).stat().st_ino != damaged.stat().st_ino
    assert (second.extra_path("media") / path).read_bytes() == (s.media_dir / path).read_bytes()


def test_an_interrupted_backups_image_directory_is_swept(tsettings: Settings) -> None:
    s = tsettings
    s.backups_dir.mkdir(parents=True)
    left = temp_path(s.backups_dir, "killed", SUFFIX, pid=2**22 + 12345)  # no such process
    (left / "abc").mkdir(parents=True)
    (left / "abc" / "x.jpg").write_bytes(b"x" * 100)
    swept = sweep_leftovers(s.backups_dir)
    assert swept.paths == [left] and swept.size_bytes == 100
    assert not left.exists()


def test_the_cli_backs_up_and_restores_the_images(tsettings: Settings) -> None:
    s = tsettings
    kept = store_message(s, "local:a", images=2, seed=1)
    before = contents(s.media_dir)
    made = invoke(s, "backup", "--name", "cli-snap")
    assert made.exit_code == 0, made.output
    assert "images: 2 (" in made.output and "cli-snap.media" in made.output
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
