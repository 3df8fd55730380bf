"""Vigil's entry point: ``python main.py <command>``.

``serve`` runs the chat server (uvicorn, one worker). Other commands
(``supervise``, ``worker``, the operator CLI) are added by their modules.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.argv[1:3] == ["supervise", "--resolved-fd"]:
    # The supervisor after its checks (see monitoring/supervisor/launch.py):
    # it runs for weeks and needs none of the imports below.
    from monitoring.supervisor.launch import run_resolved

    sys.exit(run_resolved(sys.argv[3] if len(sys.argv) > 3 else ""))

import typer

from core.config import ConfigError, Settings, load_settings

cli = typer.Typer(
    name="vigil",
    help="Vigil: a self-hosted, self-supervising AI chat server for Telegram.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from core.cli.config_view import version_text

        typer.echo(version_text())
        raise typer.Exit(0)


@cli.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print Vigil's version (and Python's, SQLite's) and exit.",
    ),
) -> None:
    """Vigil: a self-hosted, self-supervising AI chat server for Telegram."""


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(2) from None


def exit_if_public_without_token(settings: Settings) -> None:
    """A non-loopback bind needs a token the operator chose: one line naming it, exit 2."""
    problem = settings.public_bind_problem()
    if problem:
        typer.echo(f"vigil: error: {problem}", err=True)
        raise typer.Exit(2)


def exit_if_unwritable(settings: Settings) -> None:
    """A data or logs directory Vigil cannot write: one line naming it and the fix."""
    from core.permissions import EXIT_CONFIG, storage_problem

    problem = storage_problem(settings)
    if problem:
        typer.echo(f"vigil: error: {problem}", err=True)
        raise typer.Exit(EXIT_CONFIG)


@cli.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default VIGIL_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default VIGIL_PORT, 9000)."),
) -> None:
    """Run the chat server in the foreground."""
    from core.app import create_app
    from core.lifecycle import run_server
    from core.logs import start_process_logging

    settings = settings_or_exit()
    from core.telegram.cli import check_server_settings

    check_server_settings(settings)  # a bad VIGIL_TELEGRAM_SERVER[_KEY]: one line, exit 2
    exit_if_unwritable(settings)  # a read-only data dir: one line about permissions, exit 78
    from core.preflight import EXIT_CORRUPT, database_problem

    problem = database_problem(settings)  # a corrupt or too new system.db: one line, exit 3
    if problem:
        typer.echo(f"vigil: error: {problem}", err=True)
        raise typer.Exit(EXIT_CORRUPT)
    if host:
        settings.host = host
    if port:
        settings.port = port
    exit_if_public_without_token(settings)
    # The server owns (rotates) system.log and telegram.log.
    start_process_logging(settings, rotates=frozenset({"system.log", "telegram.log"}))
    app = create_app(settings)
    # Exit 75 asks the supervisor for a restart; 0 is a requested stop.
    raise typer.Exit(run_server(app, settings))


@cli.command()
def supervise(
    worker: bool = typer.Option(True, help="Also run the Huey worker (python main.py worker)."),
    child: list[str] = typer.Option(
        [], "--child", help="Extra child NAME=COMMAND (repeatable).", hidden=True
    ),
) -> None:
    """Run the server and the worker as children and keep them running (start.sh uses this)."""
    from core.logs import start_process_logging
    from core.restarts import STATE_FILE, RestartLog
    from monitoring.supervisor import supervised_children
    from monitoring.supervisor.launch import exec_supervisor, resolve

    settings = settings_or_exit()
    exit_if_public_without_token(settings)
    exit_if_unwritable(settings)
    from core.preflight import EXIT_CORRUPT, database_problem

    problem = database_problem(settings)  # before RestartLog.prepare() would create tables
    if problem:
        typer.echo(f"vigil: error: {problem}", err=True)
        raise typer.Exit(EXIT_CORRUPT)
    # Under systemd the journal gets the supervisor's decisions (restarts).
    console = sys.stderr.isatty() or "JOURNAL_STREAM" in os.environ
    start_process_logging(settings, rotates=frozenset(), console=console)
    try:
        children = supervised_children(
            sys.executable,
            os.path.abspath(__file__),
            settings.base_url + "/health/live",
            worker=worker,
            extra=child,
        )
    except ValueError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(2) from None
    store = RestartLog(settings.db_path)
    try:
        store.prepare()  # schema ready before any child may crash and be recorded
    except Exception as exc:
        typer.echo(f"vigil: cannot prepare {settings.db_path}: {exc}", err=True)
        raise typer.Exit(1) from None
    # Checked and prepared: the loop itself runs in a fresh, small process (same PID).
    resolved = resolve(
        settings, children, state_file=settings.data_dir / STATE_FILE, console=console
    )
    exec_supervisor(resolved, main_py=os.path.abspath(__file__))


def listen_address(settings: Settings) -> str:
    """Where the server listens, as an operator reads it (start.sh prints it)."""
    host = settings.host if ":" not in settings.host else f"[{settings.host.strip('[]')}]"
    where = f"http://{host}:{settings.port}"
    if settings.host in ("0.0.0.0", "::", ""):
        return f"{where} (every network interface)"
    if not settings.is_loopback_bind:
        return f"{where} (reachable from the network)"
    return f"{where} (this machine only)"


@cli.command("shell-env", hidden=True)
def shell_env() -> None:
    """Print validated paths for the shell scripts (KEY=value lines)."""
    import shlex

    settings = settings_or_exit()
    values = {
        "VIGIL_DATA_DIR": settings.data_dir.resolve(),
        "VIGIL_LOGS_DIR": settings.logs_dir.resolve(),
        "VIGIL_PID_FILE": settings.pid_file.resolve(),
        "VIGIL_URL": settings.base_url,
        "VIGIL_LISTEN": listen_address(settings),
        "VIGIL_DB": settings.db_path.resolve(),
        "VIGIL_TOKEN_FILE": settings.admin_token_file.resolve(),
        "VIGIL_LLM_URL": settings.model_profiles[settings.default_model].base_url,
        "VIGIL_TELEGRAM_CONFIGURED": "1" if settings.telegram_configured else "0",
        "VIGIL_TOKEN_SET": "1"
        if settings.admin_token is not None and settings.admin_token.get_secret_value()
        else "0",
    }
    for key, value in values.items():
        typer.echo(f"{key}={shlex.quote(str(value))}")


@cli.command("prepare-dirs", hidden=True)
def prepare_dirs() -> None:
    """start.sh's checks before anything starts: a public bind needs a token; the data and
    logs directories are created (0700) or one line says why they cannot be written."""
    settings = settings_or_exit()
    exit_if_public_without_token(settings)
    exit_if_unwritable(settings)
    for directory in (settings.data_dir, settings.logs_dir):
        os.chmod(directory, 0o700)


@cli.command("wait-healthy", hidden=True)
def wait_healthy(
    timeout: float = typer.Option(30.0, help="Seconds to wait."),
    pid: int = typer.Option(0, help="Give up early if this process exits."),
    verdict_s: float = typer.Option(8.0, help="Extra seconds to wait for the model probe."),
) -> None:
    """Wait until /health answers; print its JSON; exit 1 on timeout.

    Once it answers, waits up to ``verdict_s`` more for the first model probe,
    so start.sh reports whether a model answered rather than "unknown".
    """
    import json
    import time

    import httpx

    from core.process import pid_alive

    settings = settings_or_exit()
    deadline = time.monotonic() + timeout
    url = settings.base_url + "/health"
    report: dict | None = None
    verdict_deadline = 0.0
    while time.monotonic() < deadline:
        if pid and not pid_alive(pid):
            typer.echo("vigil: the server process exited during start-up", err=True)
            raise typer.Exit(1)
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code in (200, 503) and response.headers.get(
                "content-type", ""
            ).startswith("application/json"):
                report = response.json()
                verdict_deadline = verdict_deadline or time.monotonic() + verdict_s
                if report.get("llm") != "unknown" or time.monotonic() > verdict_deadline:
                    typer.echo(json.dumps(report))
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    if report is not None:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"vigil: {url} did not answer within {timeout:g} s", err=True)
    raise typer.Exit(1)


def _register_modules() -> None:
    from core import preflight
    from core.telegram import cli as telegram_cli

    preflight.register(cli, settings_or_exit)
    telegram_cli.register(cli, settings_or_exit)  # telegram-login / telegram-logout


_register_modules()


def _register_operator_commands() -> None:
    # `worker` (Huey consumer) and the operator CLI (status, backup, restore, ...).
    from core.cli import register as register_operator
    from core.cli.maintenance import register as register_maintenance
    from core.cli.usage import register as register_usage
    from tasks.queue import queue_depth
    from tasks.run import register_ops_data
    from tasks.worker import register as register_worker

    register_worker(cli)
    register_operator(cli, queue_depth=queue_depth)
    register_maintenance(cli)  # maintenance, announce
    register_ops_data(cli)  # db, delete, run
    register_usage(cli)  # usage
    __import__("core.cli.budget", fromlist=["register"]).register(cli)  # budget set/show/clear


# Long-running processes skip the operator CLI's imports (huey, redis, rich):
# ~70 ms less for every start and restart of the server and the supervisor.
PROCESS_COMMANDS = frozenset(
    {"serve", "supervise", "shell-env", "wait-healthy", "prepare-dirs", "--version"}
    | {"preflight", "supervisor-pid"}  # start.sh / prepare.sh / stop.sh steps
)

if __name__ != "__main__":  # imported (tests, tools): the whole CLI
    _register_operator_commands()


# What help and usage errors call the command: the wrapper that works with the system
# Python too (a bare `python main.py` fails there with ModuleNotFoundError: typer).
PROG = "scripts/vigilctl"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage mistakes print one line and exit 2, never a panel or traceback."""
    from typer._click import exceptions as click_errors

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in PROCESS_COMMANDS:
        _register_operator_commands()
    try:
        result = cli(args=argv, standalone_mode=False, prog_name=PROG)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else f"usage: {PROG} --help")
        return 0
    except click_errors.UsageError as exc:
        words = exc.ctx.command_path.split()[1:] if exc.ctx else []
        hint = " ".join([PROG, *words, "--help"])
        typer.echo(f"vigil: {exc.format_message()} (see: {hint})", err=True)
        return 2
    except click_errors.ClickException as exc:
        typer.echo(f"vigil: {exc.format_message()}", err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("vigil: aborted", err=True)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
