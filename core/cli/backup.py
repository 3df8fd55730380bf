"""Operator commands about snapshots and integrity: backup, restore, snapshots, cleanup, validate.

Registered into main.py's app by ``core.cli.register``; the logic lives in
core/backups/ (backup.py, restore.py, retention.py, integrity.py).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import typer

from core import maintenance, media_upkeep
from core.backups import backup as backups
from core.backups import restore
from core.backups import runs as backup_runs
from core.backups import temp as backup_temp
from core.backups.extras import restore_extras
from core.backups.file_users import holders
from core.backups.integrity import (
    check_backup_runs,
    check_backup_temp,
    check_latest_backup,
    check_snapshot_files,
    private_paths,
    repair_fts,
    validate_database,
)
from core.backups.retention import RetentionPolicy, prune_snapshots
from core.cli.output import (
    JSON_OPT,
    cli_settings,
    fail,
    fmt_bytes,
    guarded,
    print_json,
    progress_bar,
    require_db,
    user_path,
)
from core.cli.views import render_snapshots, render_validate, server_answers
from core.database import connect_sync
from core.errors import BadRequest
from core.media import MediaStore
from core.process import server_pid
from core.restarts import SUPERVISOR_LOCK


@guarded
def backup(
    name: str | None = typer.Option(
        None, "--name", help="Snapshot name (default snapshot_<UTC time>)."
    ),
    with_secrets: bool = typer.Option(
        False,
        "--with-secrets",
        help="Keep the secret values in the snapshot's copy of the settings files.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Take a compressed, checksummed, verified snapshot now (database, session, settings)."""
    settings = cli_settings()
    require_db(settings)
    with progress_bar(not as_json) as progress:
        snap = backup_runs.take_backup(
            settings, trigger="cli", name=name, with_secrets=with_secrets, progress=progress
        )
    if as_json:
        print_json(snap.to_dict())
        return
    typer.echo(
        f"backup {snap.name}: {snap.messages} messages, {fmt_bytes(snap.db_bytes)} -> "
        f"{fmt_bytes(snap.size_bytes)}, verified, in {snap.duration_s:.2f} s ({snap.path})"
    )
    images = snap.files.get("media")
    if images is not None:
        typer.echo(
            f"images: {images['images']} ({fmt_bytes(int(images['image_bytes']))}) in "
            f"{images['file']}"
            + (f"; {images['missing']} were gone from data/media" if images["missing"] else "")
        )
    others = sorted(role for role in snap.files if role != "media")
    if others:
        secrets = "with secrets" if with_secrets else "secrets replaced by a placeholder"
        typer.echo(f"also kept: {', '.join(others)} ({secrets}; files mode 0600)")


@guarded
def restore_cmd(
    name: str = typer.Argument(
        ..., help="Snapshot name (see `snapshots`), or `latest`: the newest verified one."
    ),
    confirm: bool = typer.Option(False, "--confirm", help="Really replace the database."),
    target_path: Path | None = typer.Option(
        None, "--target-path", help="Write a plain SQLite database here instead."
    ),
    session: bool = typer.Option(
        False, "--session", help="Also replace the current telegram.session (kept aside)."
    ),
    settings_files: bool = typer.Option(
        False, "--settings", help="Also replace the current .env / config file (kept aside)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Restore a snapshot (the live database, by any path: server stopped and --confirm).

    The snapshot's telegram.session and settings files are restored where they
    are missing now, or when asked (--session, --settings); a current file is
    then kept aside, never overwritten.
    """
    settings = cli_settings()
    target_path = user_path(target_path)
    skipped: list[str] = []
    if name.strip().lower() == "latest":
        with progress_bar(not as_json) as progress:
            snap, skipped = backups.latest_verified(settings.backups_dir, progress=progress)
        for line in skipped:
            typer.echo(line, err=True)
    else:
        snap = backups.find_snapshot(settings.backups_dir, name)
    live = False
    with progress_bar(not as_json) as progress:
        if target_path is not None:
            restore.refuse_companion(target_path, settings.db_path)
        if target_path is not None and not restore.is_live_target(target_path, settings.db_path):
            result = restore.restore_to_file(
                snap, target_path, overwrite=confirm, progress=progress
            )
        else:  # the live database, whatever path named it
            live = True
            result = restore.restore_live(
                snap,
                settings.db_path,
                confirm=confirm,
                supervisor_lock=settings.data_dir / SUPERVISOR_LOCK,
                answering=lambda: server_answers(settings),
                progress=progress,
                media_root=settings.media_dir,
            )
    extras = (
        restore_extras(
            snap, settings, session=session, settings_files=settings_files, now=time.time()
        )
        if live
        else []
    )
    data = {
        "snapshot": result.snapshot,
        "target": str(result.target),
        "messages": result.messages,
        "kept_aside": [str(p) for p in result.kept_aside],
        "files": extras,
        "images": None if result.images is None else result.images.to_dict(),
        "skipped": skipped,
        "redo_deletions": [
            {"scope": scope, "target": target} for scope, target in result.redo_deletions
        ],
    }
    if as_json:
        print_json(data)
        return
    typer.echo(f"restored {result.snapshot} to {result.target} ({result.messages} messages)")
    for path in result.kept_aside:
        typer.echo(f"previous file kept as {path}")
    if result.images is not None:
        typer.echo(_images_line(result.images))
    for line in extras:
        typer.echo(line)
    for scope, target in result.redo_deletions:
        typer.echo(
            f"the snapshot predates the deletion of {scope} {target}: its data is back; "
            f"delete it again: scripts/vigilctl delete --{scope} {shlex.quote(target)} --confirm"
        )


def _images_line(images: restore.media.MediaRestore) -> str:
    line = f"images: {images.restored} restored, {images.unchanged} already in place"
    if images.set_aside:
        line += f", {images.set_aside} of the replaced database moved to {images.aside}"
    if images.missing:
        line += f"; {images.missing} have no file (shown as text)"
    return line


@guarded
def snapshots(
    verify: bool = typer.Option(False, "--verify", help="Re-check every checksum."),
    as_json: bool = JSON_OPT,
) -> None:
    """List snapshots, newest first."""
    settings = cli_settings()
    found = backups.list_snapshots(settings.backups_dir)
    if not settings.backups_dir.is_dir():
        what = (
            "does not exist (VIGIL_BACKUP_DIR); the first backup creates it"
            if not settings.backups_dir.exists()
            else "is not a directory (VIGIL_BACKUP_DIR): backups fail until it is one"
        )
        typer.echo(f"vigil: backup directory {settings.backups_dir} {what}", err=True)
    states: dict[str, str] = {}
    if verify:
        with progress_bar(not as_json) as progress:
            for snap in found:
                try:
                    backups.verify_snapshot(snap, progress=progress)
                    states[snap.name] = "ok"
                except backups.SnapshotDamaged as exc:
                    states[snap.name] = exc.message
    if as_json:
        print_json(
            [{**s.to_dict(), **({"verify": states[s.name]} if verify else {})} for s in found]
        )
    else:
        render_snapshots(found, states)
    if any(v != "ok" for v in states.values()):
        raise typer.Exit(1)


@guarded
def cleanup(
    keep: int | None = typer.Option(
        None, "--keep", help="Keep only the N newest snapshots (any kind)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go."),
    as_json: bool = JSON_OPT,
) -> None:
    """Prune snapshots (retention policy, or --keep N), backup temp files, old task records."""
    settings = cli_settings()
    if keep is not None and keep < 0:
        raise BadRequest(f"--keep must be 0 or more, got {keep}")
    gone = prune_snapshots(
        settings.backups_dir,
        RetentionPolicy.from_settings(settings),
        keep_newest=keep,
        dry_run=dry_run,
    )
    report: dict[str, Any] = {"dry_run": dry_run, "snapshots_removed": [s.name for s in gone]}
    temp = (
        backup_temp.find_leftovers(settings.backups_dir)
        if dry_run
        else backup_temp.sweep_leftovers(settings.backups_dir)
    )
    report["backup_temp_removed"] = [p.name for p in temp.paths]
    report["backup_temp_bytes"] = temp.size_bytes
    if settings.db_path.is_file() and not dry_run:
        conn = connect_sync(settings.db_path)
        try:
            report["task_records_removed"] = maintenance.cleanup_old_tasks(
                conn, days=settings.task_retention_days
            )
            store = MediaStore(settings.media_dir)
            if settings.message_retention_days:
                pruned = media_upkeep.delete_old_messages(
                    conn, store, days=settings.message_retention_days
                )
                report["messages_removed"] = pruned["deleted"]
                report["images_removed"] = pruned["images_removed"]
            report["media"] = media_upkeep.sweep_orphans(conn, store).to_dict()
        finally:
            conn.close()
    if as_json:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(gone)} snapshot(s): {', '.join(report['snapshots_removed']) or '-'}")
    if temp.paths:
        typer.echo(
            f"{verb} {len(temp.paths)} temp file(s) of interrupted backups "
            f"({fmt_bytes(temp.size_bytes)})"
        )
    if "task_records_removed" in report:
        typer.echo(f"removed {report['task_records_removed']} old task record(s)")
    if "messages_removed" in report:
        typer.echo(
            f"removed {report['messages_removed']} message(s) past retention "
            f"and {report['images_removed']} image file(s)"
        )
    if "media" in report:
        media = report["media"]
        typer.echo(
            f"removed {media['removed']} image file(s) no message refers to "
            f"({fmt_bytes(media['removed_bytes'])})"
            + (f"; {media['missing']} stored image(s) have no file" if media["missing"] else "")
        )


@guarded
def validate(
    db: Path | None = typer.Option(None, "--db", help="Check this database file instead."),
    repair_fts_index: bool = typer.Option(
        False, "--repair-fts", help="Rebuild the search index (server stopped)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Integrity, search index, orphan rows, file permissions; exit 1 if anything is wrong."""
    settings = cli_settings()
    db = user_path(db)
    path = db if db is not None else settings.db_path
    running = db is None and (
        server_pid(settings.pid_file) is not None
        or bool(holders(settings.db_path))  # e.g. a server by hand on another port
        or server_answers(settings)
    )
    if repair_fts_index:
        if running:
            fail("stop the server before --repair-fts (the rebuild holds the write lock)")
        repair_fts(path)
    perms = (
        None
        if db is not None
        else private_paths(
            settings.data_dir, settings.db_path, settings.logs_dir, settings.backups_dir
        )
    )
    # + fts_content; permissions, backups, snapshot_files, backup_temp
    steps = 4 + int(not running) + 5 * int(db is None)
    with progress_bar(not as_json) as progress:
        done = [0]

        def tick(_check: Any) -> None:
            done[0] += 1
            progress("validate", done[0], steps)

        checks = validate_database(path, full_fts=not running, permissions=perms, on_check=tick)
        if db is None:
            now = time.time()
            checks.append(check_latest_backup(settings.backups_dir, now=now))
            checks.append(check_snapshot_files(settings.backups_dir, now=now))
            checks.append(check_backup_temp(settings.backups_dir))
            checks.append(check_backup_runs(settings, now=now))
    if as_json:
        print_json(
            {
                "database": str(path),
                "ok": all(c.is_ok for c in checks),
                "checks": [c.to_dict() for c in checks],
            }
        )
    else:
        render_validate(path, checks, repaired=repair_fts_index)
    if not all(c.is_ok for c in checks):
        raise typer.Exit(1)
