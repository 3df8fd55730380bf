"""``python main.py telegram-login`` / ``telegram-logout`` (scripts/telegram_*.sh call them).

Both refuse while the server holds the session (the lock next to
``data/telegram.session``), check the settings before touching the network,
and end with one clear line and a non-zero exit on every failure:
exit 1 login/logout failed, 2 configuration, 3 session in use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import typer

from core.config import ConfigError, Settings
from core.telegram.session import (
    ServerProfile,
    SessionBusy,
    SessionLock,
    check_session_server,
    delete_session_files,
    server_profile,
)

ClientFactory = Callable[[Settings, ServerProfile], Any]
Say = Callable[[str], None]
NO_API = (
    "VIGIL_TELEGRAM_API_ID and VIGIL_TELEGRAM_API_HASH must be set first "
    "(create them at https://my.telegram.org -> API development tools; see docs/telegram.md)"
)


class CliFailure(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _prepare(settings: Settings, *, check_server: bool = True) -> ServerProfile:
    if not settings.telegram_configured:
        raise CliFailure(NO_API, 2)
    try:
        profile = server_profile(settings)
        if check_server:
            check_session_server(settings.session_path, profile)
    except ConfigError as exc:
        raise CliFailure(str(exc), 2) from None
    return profile


def _default_factory(settings: Settings, profile: ServerProfile) -> Any:
    from core.telegram.client import make_client

    return make_client(settings, profile)


def run_login(
    settings: Settings,
    *,
    bot_token: str | None,
    ask: Callable[[str, bool], str],
    factory: ClientFactory = _default_factory,
) -> str:
    """Log in; returns the success line or raises CliFailure."""
    from core.telegram.auth import LoginError, login

    profile = _prepare(settings)
    token = bot_token
    if token is None and settings.telegram_bot_token is not None:
        token = settings.telegram_bot_token.get_secret_value() or None
    with _locked(settings, "telegram-login"):
        try:
            return asyncio.run(
                login(
                    factory(settings, profile),
                    profile=profile,
                    session_path=settings.session_path,
                    bot_token=token,
                    ask=ask,
                )
            )
        except LoginError as exc:
            raise CliFailure(f"login failed: {exc}", 1) from None


def run_logout(
    settings: Settings, *, local: bool, factory: ClientFactory = _default_factory
) -> str:
    """Log out at Telegram (unless ``local``) and delete the session files."""
    from core.telegram.auth import LoginError, logout

    if not settings.session_path.exists() or settings.session_path.stat().st_size == 0:
        delete_session_files(settings.session_path)
        return "no Telegram session to log out of"
    profile = _prepare(settings, check_server=False)
    with _locked(settings, "telegram-logout"):
        line = "session deleted without telling Telegram (--local)"
        if not local:
            try:
                line = asyncio.run(logout(factory(settings, profile), profile=profile))
            except LoginError as exc:
                raise CliFailure(
                    f"logout failed: {exc}; the session was kept (use --local to delete it "
                    "anyway, then end it under Settings -> Devices in a Telegram app)",
                    1,
                ) from None
        delete_session_files(settings.session_path)
        return line


class _locked:
    def __init__(self, settings: Settings, holder: str) -> None:
        self.lock = SessionLock(settings.session_path)
        self.holder = holder

    def __enter__(self) -> None:
        try:
            self.lock.acquire(self.holder)
        except SessionBusy as exc:
            raise CliFailure(f"refusing: {exc.message}", 3) from None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _ask(prompt: str, secret: bool) -> str:
    return str(typer.prompt(prompt, hide_input=secret))


def register(cli: typer.Typer, settings_or_exit: Callable[[], Settings]) -> None:
    """Add ``telegram-login`` and ``telegram-logout`` to the CLI."""

    @cli.command("telegram-login")
    def telegram_login(
        bot_token: str = typer.Option(
            None, "--bot-token", help="Log a bot in (default VIGIL_TELEGRAM_BOT_TOKEN)."
        ),
    ) -> None:
        """Log a Telegram account in: phone, code, 2FA password — or a bot token."""
        _finish(lambda: run_login(settings_or_exit(), bot_token=bot_token, ask=_ask))

    @cli.command("telegram-logout")
    def telegram_logout(
        local: bool = typer.Option(
            False, "--local", help="Only delete the session file, without telling Telegram."
        ),
    ) -> None:
        """Log the Telegram session out and delete data/telegram.session."""
        _finish(lambda: run_logout(settings_or_exit(), local=local))


def _finish(action: Callable[[], str]) -> None:
    # Telethon's own warnings would print beside our one line; its errors still show.
    logging.getLogger("telethon").setLevel(logging.ERROR)
    try:
        line = action()
    except CliFailure as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except (KeyboardInterrupt, EOFError, typer.Abort):
        typer.echo("vigil: interrupted; nothing was changed", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"vigil: {line}")


def check_server_settings(settings: Settings) -> None:
    """For ``serve``: a bad server/key setting, or a session made for another
    server, stops start-up with one line."""
    if not settings.telegram_configured:
        return
    try:
        check_session_server(settings.session_path, server_profile(settings))
    except ConfigError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(2) from None
