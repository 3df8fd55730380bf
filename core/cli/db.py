"""``vigilctl db vacuum|analyze|reindex|checkpoint``: database maintenance.

While the server runs, the work is done by the server itself, on its one
writer connection (``POST /admin/db/<operation>`` with the admin token): the
single-writer invariant holds, chat turns wait for the lock rather than fail,
and the file keeps its identity (no ``database_replaced``). When the server
is stopped, the CLI does the same work on its own connection. A server that
runs but does not answer is refused rather than raced.

``admin_call`` and ``server_mode`` are shared with ``core/cli/data.py``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer

from core import dbops
from core.cli.output import (
    JSON_OPT,
    cli_settings,
    fail,
    fmt_bytes,
    guarded,
    print_json,
    progress_bar,
    require_db,
    show_table,
)
from core.cli.views import admin_token, server_answers
from core.config import Settings
from core.database import connect_sync
from core.errors import BadRequest
from core.process import running_supervisor, server_pid

app = typer.Typer(
    help="Database maintenance: vacuum, analyze, reindex, checkpoint (safe while Vigil runs).",
    no_args_is_help=True,
)


def required_admin_token(settings: Settings) -> str:
    token = admin_token(settings)
    if not token:
        fail(
            f"the server runs but no admin token is readable (VIGIL_ADMIN_TOKEN, or "
            f"{settings.admin_token_file})"
        )
    return token


def server_mode(settings: Settings) -> bool:
    """True: ask the running server. False: the server is stopped, work directly."""
    if server_answers(settings):
        return True
    # A supervisor holding its lock (systemd: no PID file) restarts the server
    # at any moment: working beside it would race its writer.
    pid = server_pid(settings.pid_file) or running_supervisor(settings.data_dir)
    if pid is not None:
        fail(
            f"Vigil (pid {pid}) runs but its server does not answer "
            f"{settings.base_url}/health/live; try again when it answers, or stop it first "
            "(scripts/stop.sh)"
        )
    return False


def admin_call(settings: Settings, path: str, **kwargs: Any) -> dict[str, Any]:
    """POST to an admin endpoint of the running server; one-line failure on any error."""
    headers = {"Authorization": f"Bearer {required_admin_token(settings)}"}
    try:
        response = httpx.post(
            settings.base_url + path,
            headers=headers,
            timeout=httpx.Timeout(10.0, read=None),  # a VACUUM takes as long as it takes
            **kwargs,
        )
    except httpx.HTTPError as exc:
        fail(f"lost the server during {path}: {type(exc).__name__}: {exc}")
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or f"HTTP {response.status_code}"
        fail(f"the server refused: {message}", 2 if response.status_code in (400, 422) else 1)
    if not isinstance(body, dict):
        fail(f"unexpected answer from {path}")
    return body


def run_with_progress(
    work: Callable[[], dict[str, Any]],
    *,
    phase: str,
    show: bool,
    measure: Callable[[], tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Run ``work`` on a thread; meanwhile a bar (``measure`` -> (done, total)) or a pulse."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # re-raised on the main thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"vigil-{phase}", daemon=True)
    with progress_bar(show) as progress:
        thread.start()
        while thread.is_alive():
            done, total = measure() if measure is not None else (0, 0)
            progress(phase, min(done, total) if total else done, total)
            thread.join(0.2)
    if "error" in box:
        raise box["error"]
    return dict(box["result"])


def _wal_progress(db_path: Path) -> Callable[[], tuple[int, int]] | None:
    """VACUUM first builds a copy in the temp directory (a pulse: nothing to measure),
    then writes every live page into the WAL: its growth is the progress."""
    try:
        conn = connect_sync(db_path, readonly=True)
        try:
            f = dbops.figures(conn, db_path)
        finally:
            conn.close()
    except (sqlite3.Error, OSError):
        return None
    total = max(1, (f["pages"] - f["freelist_pages"]) * f["page_size"])
    wal = Path(f"{db_path}-wal")
    start = f["wal_bytes"]

    def measure() -> tuple[int, int]:
        try:
            size = wal.stat().st_size
        except OSError:
            size = 0
        if size < start:  # a checkpoint emptied it: the copy is done
            return total, total
        grown = size - start
        return (grown, total) if grown > 0 else (0, 0)

    return measure


def run_db_operation(
    settings: Settings, operation: str, *, mode: str = "truncate", show: bool = True
) -> dict[str, Any]:
    """The operation through the running server, or directly when it is stopped."""
    dbops.check_operation(operation, mode)
    require_db(settings)
    measure = _wal_progress(settings.db_path) if operation == "vacuum" else None
    if server_mode(settings):

        def work() -> dict[str, Any]:
            return admin_call(settings, f"/admin/db/{operation}", params={"mode": mode})

        via = "the server"
    else:
        if operation == "vacuum":
            dbops.check_vacuum_space(settings.db_path)

        def work() -> dict[str, Any]:
            conn = connect_sync(settings.db_path, create=False)
            try:
                return dbops.run_operation(conn, settings.db_path, operation, mode=mode)
            finally:
                conn.close()

        via = "directly (server stopped)"
    result = run_with_progress(work, phase=operation, show=show, measure=measure)
    result["via"] = via
    return result


def render(result: dict[str, Any]) -> None:
    before, after = result["before"], result["after"]
    rows = [
        ("file size", fmt_bytes(before["size_bytes"]), fmt_bytes(after["size_bytes"])),
        ("pages", before["pages"], after["pages"]),
        ("freelist pages", before["freelist_pages"], after["freelist_pages"]),
        ("WAL size", fmt_bytes(before["wal_bytes"]), fmt_bytes(after["wal_bytes"])),
    ]
    show_table(f"db {result['operation']}", ["", "before", "after"], rows)
    typer.echo(f"{result['operation']} done in {result['duration_s']:.2f} s, {result['via']}")


def _checkpoint_busy(result: dict[str, Any]) -> bool:
    checkpoint = result.get("checkpoint") or {}
    return bool(checkpoint.get("busy")) and result.get("mode", "TRUNCATE") != "PASSIVE"


def _command(operation: str, doc: str) -> Callable[..., None]:
    @guarded
    def command(as_json: bool = JSON_OPT) -> None:
        settings = cli_settings()
        result = run_db_operation(settings, operation, show=not as_json)
        print_json(result) if as_json else render(result)
        if _checkpoint_busy(result):
            fail("the final checkpoint was held back by a reader; the WAL was not emptied")

    command.__doc__ = doc
    command.__name__ = operation
    return command


app.command("vacuum")(
    _command(
        "vacuum",
        "Rewrite the file without free pages (needs ~2x its size free; writes wait meanwhile).",
    )
)
app.command("analyze")(
    _command("analyze", "Refresh the query planner's statistics (ANALYZE, PRAGMA optimize).")
)
app.command("reindex")(_command("reindex", "Rebuild every index (REINDEX; writes wait meanwhile)."))


@app.command("checkpoint")
@guarded
def checkpoint(
    mode: str = typer.Option(
        "truncate", "--mode", help="passive, full, restart or truncate (empties the WAL)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Copy the WAL into the database file (TRUNCATE: and empty it)."""
    settings = cli_settings()
    if mode.upper() not in dbops.CHECKPOINT_MODES:
        raise BadRequest(f"--mode must be passive, full, restart or truncate, got {mode!r}")
    result = run_db_operation(settings, "checkpoint", mode=mode, show=not as_json)
    if as_json:
        print_json(result)
    else:
        render(result)
        done = result["checkpoint"]
        typer.echo(
            f"checkpoint {result['mode'].lower()}: {done['checkpointed']} of "
            f"{done['wal_pages']} WAL page(s) copied"
            + ("; busy (a reader or writer held it back)" if done["busy"] else "")
        )
    if _checkpoint_busy(result):
        fail("the checkpoint was held back by a reader or writer; run it again later")


def register(cli: typer.Typer) -> None:
    """Add ``db`` to main.py's app."""
    cli.add_typer(app, name="db")
