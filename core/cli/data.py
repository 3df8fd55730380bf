"""``vigilctl delete --chat ID | --user ID [--confirm]``: remove a chat's or a user's data.

Without ``--confirm`` it is a dry run: it prints what would be removed and
exits 0 (1 when nothing is stored for that chat or user, as with
``--confirm``). With the server running the deletion is done by the server
(``POST /admin/delete``), which also drops the chat's cached context window;
with it stopped, directly. See ``core/dbops.py`` for what "no trace" takes.
"""

from __future__ import annotations

import getpass
from typing import Any

import typer

from core import dbops
from core.backups.backup import list_snapshots
from core.cli.db import admin_call, run_with_progress, server_mode
from core.cli.output import JSON_OPT, cli_settings, fail, guarded, print_json, require_db
from core.database import connect_sync
from core.errors import BadRequest, NotFound


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's numeric uid)
        return "cli"


def _direct(settings: Any, scope: str, target: str, *, confirm: bool, vacuum: bool) -> Any:
    conn = connect_sync(settings.db_path, create=False)
    try:
        if not confirm:
            plan = dbops.plan_deletion(conn, scope, target, data_dir=settings.data_dir)
            return {"dry_run": True, **plan.to_dict()}
        result = dbops.delete_data(
            conn,
            scope,
            target,
            data_dir=settings.data_dir,
            db_path=settings.db_path,
            by=_who(),
            vacuum=vacuum,
        )
        return {"dry_run": False, **result}
    finally:
        conn.close()


# Copies of the database that restore (before-restore), the database watch
# (replaced, deleted) keep aside in data/: a deletion never touches them.
KEPT_COPY_TAGS = (".before-restore-", ".replaced-", ".deleted-")


def _not_touched(settings: Any) -> list[str]:
    """What may still hold the deleted data: kept database copies and snapshots."""
    db = settings.db_path
    kept = sorted(
        p.name
        for p in db.parent.glob(db.name + ".*")
        if any(tag in p.name for tag in KEPT_COPY_TAGS) and not p.name.endswith(("-wal", "-shm"))
    )
    found = [str(db.parent / name) for name in kept]
    media = settings.media_dir  # images moved aside by a restore, with their database
    found += sorted(str(p) for p in media.parent.glob(media.name + ".before-restore-*"))
    snapshots = len(list_snapshots(settings.backups_dir))
    if snapshots:
        found.append(f"{snapshots} snapshot(s) in {settings.backups_dir}")
    return found


def _nothing(result: dict[str, Any]) -> bool:
    return not (
        result["chats"] or result["messages"] or any(result["rows"].values()) or result["files"]
    )


@guarded
def delete(
    chat: str | None = typer.Option(None, "--chat", help="Chat id (alice = local:alice, tg:123)."),
    user: str | None = typer.Option(
        None, "--user", help="Telegram user id: their private chat and their group messages."
    ),
    confirm: bool = typer.Option(False, "--confirm", help="Really delete (else a dry run)."),
    no_vacuum: bool = typer.Option(
        False, "--no-vacuum", help="Skip the VACUUM (faster; freed pages may keep old copies)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Delete a chat's or a Telegram user's messages, summaries, ledger rows and files."""
    if (chat is None) == (user is None):
        raise BadRequest("give exactly one of --chat ID or --user ID")
    scope, target = ("chat", chat) if chat is not None else ("user", user)
    assert target is not None
    # Bad ids are refused here, before anything is asked of the server.
    shown = dbops.chat_id_of(target) if scope == "chat" else str(dbops.user_id_of(target))
    settings = cli_settings()
    require_db(settings)
    if server_mode(settings):
        body = {
            "scope": scope,
            "target": target,
            "by": _who(),
            "confirm": confirm,
            "vacuum": not no_vacuum,
        }

        def work() -> dict[str, Any]:
            return admin_call(settings, "/admin/delete", json=body)

    else:

        def work() -> dict[str, Any]:
            return dict(_direct(settings, scope, target, confirm=confirm, vacuum=not no_vacuum))

    try:
        result = run_with_progress(work, phase="delete", show=confirm and not as_json)
    except NotFound as exc:
        fail(exc.message)
    what = "chat" if scope == "chat" else "Telegram user"
    if result["dry_run"] and _nothing(result):
        fail(f"nothing stored for {what} {shown!r}")
    if not result["dry_run"]:
        result["not_touched"] = _not_touched(settings)
    if as_json:
        print_json(result)
        return
    verb = "would remove" if result["dry_run"] else "removed"
    rows = ", ".join(f"{n} {t} row(s)" for t, n in result["rows"].items() if n)
    typer.echo(
        f"{what} {result['target']}: {verb} {result['messages']} message(s) in "
        f"{len(result['affected'])} chat(s), {len(result['chats'])} chat record(s)"
        + (f", {rows}" if rows else "")
        + f", {result.get('images', 0)} image(s), {result['files']} file(s)"
    )
    if result["summaries_cleared"]:
        typer.echo(f"{verb} the summaries of {', '.join(result['summaries_cleared'])}")
    if result["dry_run"]:
        typer.echo("dry run: nothing deleted; add --confirm to delete")
        return
    typer.echo(f"done in {result['duration_s']:.2f} s; vacuum {result['vacuum']}")
    if result["not_touched"]:
        typer.echo(
            "older copies may still hold it (not touched; delete them to be rid of it): "
            + "; ".join(result["not_touched"])
        )
    if result["checkpoint"]["busy"]:
        fail("a reader held the WAL: run scripts/vigilctl db checkpoint to empty it")


def register(cli: typer.Typer) -> None:
    """Add ``delete`` to main.py's app."""
    cli.command("delete")(delete)
