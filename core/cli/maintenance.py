"""Operator commands for a maintenance window: ``maintenance on|off`` and ``announce``.

``maintenance`` writes the ``maintenance`` row of ``system.db`` directly (so it
works, and is kept, while the server is down); a running server takes it up
within about a second (``core/maintenance_mode.py``). ``announce`` goes through
the running server (``POST /admin/announce``), the only process holding the
Telegram connection.
"""

from __future__ import annotations

import getpass
import json
import time
from typing import Any

import httpx
import typer

from core import maintenance_mode as mm
from core.cli.output import (
    JSON_OPT,
    cli_settings,
    fail,
    fmt_time,
    guarded,
    print_json,
    progress_bar,
    require_db,
)
from core.cli.views import admin_token, server_answers
from core.config import Settings
from core.database import connect_sync
from core.errors import BadRequest

MAX_REASON = 500
group = typer.Typer(
    help="Maintenance mode: new turns get a polite 'down for maintenance' reply.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _connect(settings: Settings) -> Any:
    require_db(settings)
    conn = connect_sync(settings.db_path, create=False)
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'maintenance'"
    ).fetchone():
        conn.close()
        fail("this database has no maintenance table yet: start the server once to upgrade it")
    return conn


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def describe(window: mm.MaintenanceWindow | None, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    if window is None:
        return "maintenance mode: off"
    until = "no end set (scripts/vigilctl maintenance off ends it)"
    if window.until is not None:
        until = f"until {fmt_time(window.until)} (in {_duration(window.until - now)})"
    return (
        f"maintenance mode: on since {fmt_time(window.started_at)} "
        f"({_duration(now - window.started_at)}), {until}; reason: {window.reason}; "
        f"set by {window.set_by}"
    )


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _server_took_it(settings: Settings, *, on: bool, wait_s: float = 3.0) -> bool | None:
    """None: no server answers; else whether /health shows the new state within wait_s."""
    if not server_answers(settings):
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            body = httpx.get(settings.base_url + "/health", timeout=2.0).json()
            if ("maintenance" in body.get("reasons", [])) == on:
                return True
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _report_server(settings: Settings, *, on: bool) -> None:
    took = _server_took_it(settings, on=on)
    if took is None:
        if on:
            typer.echo("the server is not running; it starts in maintenance mode")
    elif took:
        typer.echo(
            "the running server refuses new turns now"
            if on
            else "the running server answers new turns again"
        )
    else:
        typer.echo("the running server has not shown the change yet (see logs/system.log)")


@group.callback()
def show(ctx: typer.Context, as_json: bool = JSON_OPT) -> None:
    """Show whether maintenance mode is on (and until when)."""
    if ctx.invoked_subcommand is not None:
        return
    _show(as_json)


@guarded
def _show(as_json: bool) -> None:
    settings = cli_settings()
    conn = _connect(settings)
    try:
        window = mm.read_sync(conn)
    finally:
        conn.close()
    if window is not None and window.is_over(time.time()):
        window = None  # ended by itself; the server deletes the row
    if as_json:
        print_json({"on": window is not None, **(window.to_dict() if window else {})})
        return
    typer.echo(describe(window))


@group.command("on")
@guarded
def on(
    reason: str = typer.Argument(..., help="Why (shown in status, /health and the API)."),
    until: str | None = typer.Option(
        None,
        "--until",
        help="When it ends by itself: 30m, 2h, 21:30 (UTC) or an ISO time (UTC unless it "
        "carries an offset).",
    ),
) -> None:
    """Turn maintenance mode on: new turns get a polite reply / HTTP 503 `maintenance`."""
    # One printable line: the reason goes into the logs (a newline forged a log
    # line, an escape sequence reached the terminal), status tables and replies.
    reason = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    if not reason.strip():
        raise BadRequest("the reason must not be empty")
    if len(reason) > MAX_REASON:
        raise BadRequest(f"the reason is {len(reason)} characters; the limit is {MAX_REASON}")
    end = mm.parse_until(until) if until is not None else None
    settings = cli_settings()
    conn = _connect(settings)
    try:
        old = mm.read_sync(conn)
        started = old.started_at if old is not None and not old.is_over(time.time()) else None
        window = mm.MaintenanceWindow(
            reason=reason.strip(),
            started_at=started or time.time(),
            until=end,
            set_by=_who(),
        )
        mm.set_sync(conn, window)
    finally:
        conn.close()
    typer.echo(("updated: " if started else "") + describe(window))
    _report_server(settings, on=True)


@group.command("off")
@guarded
def off() -> None:
    """Turn maintenance mode off: new turns are answered again."""
    settings = cli_settings()
    conn = _connect(settings)
    try:
        window = mm.clear_sync(conn)
    finally:
        conn.close()
    if window is None:
        typer.echo("maintenance mode was not on")
        return
    typer.echo(
        f"maintenance mode off (it was on for {_duration(time.time() - window.started_at)}: "
        f"{window.reason})"
    )
    _report_server(settings, on=False)


@guarded
def announce(
    text: str = typer.Argument(..., help="The message for every active chat."),
    days: float = typer.Option(
        30.0, "--days", help="Active chat: its chatter wrote within this many days."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list the chats it would reach."),
    as_json: bool = JSON_OPT,
) -> None:
    """Message every active chat (through the running server, within Telegram's budget)."""
    if not text.strip():
        raise BadRequest("the text must not be empty")
    if not 0 < days <= 3650:
        raise BadRequest(f"--days must be between 0 and 3650, got {days:g}")
    settings = cli_settings()
    token = admin_token(settings)
    if not server_answers(settings):
        fail(
            f"no server answers at {settings.base_url}: announce goes through the running "
            "server (start it with scripts/start.sh)"
        )
    headers = {"Authorization": f"Bearer {token or ''}"}
    body = {"text": text, "days": days, "dry_run": dry_run}
    summary: dict[str, Any] | None = None
    timeout = httpx.Timeout(10.0, read=None)
    try:
        with (
            httpx.stream(
                "POST",
                settings.base_url + "/admin/announce",
                json=body,
                headers=headers,
                timeout=timeout,
            ) as response,
            progress_bar(not as_json) as progress,
        ):
            if response.status_code != 200:
                response.read()
                fail(_error_text(response), 2 if response.status_code < 500 else 1)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("event") == "progress":
                    progress("announce", int(event["done"]), int(event["total"]))
                elif event.get("event") == "done":
                    summary = event["summary"]
                elif event.get("event") == "error":
                    fail(f"the server failed: {event['error'].get('message', 'see its logs')}")
    except httpx.HTTPError as exc:
        fail(f"announce interrupted: {exc} (the server goes on sending; see logs/system.log)")
    if summary is None:
        fail("the server ended the announcement without a summary (see logs/system.log)")
    if as_json:
        print_json(summary)
    elif dry_run:
        chats = summary.get("chats", [])
        typer.echo(f"would announce to {len(chats)} chat(s): {', '.join(chats) or '-'}")
    else:
        typer.echo(
            f"announced to {summary['total']} active chat(s) in {summary['seconds']:g} s: "
            f"{summary['sent']} sent in Telegram, {summary['stored']} stored in local chats, "
            f"{summary['skipped']} skipped, {summary['failed']} failed"
            + (f" ({', '.join(summary['failed_chats'])})" if summary["failed_chats"] else "")
        )
    if summary.get("failed"):
        raise typer.Exit(1)


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error.get("message") or error.get("code"))
    except (ValueError, KeyError, TypeError):
        return f"the server answered HTTP {response.status_code}"


def register(cli: typer.Typer) -> None:
    """Add ``maintenance`` (on/off/show) and ``announce`` to main.py's app."""
    cli.add_typer(group, name="maintenance")
    cli.command("announce")(announce)
