"""Log a Telegram account in or out (a Telethon boundary module, like core/telegram/gateway.py).

Used only by ``python main.py telegram-login`` / ``telegram-logout`` while the
server is stopped (the CLI holds the session lock). Every Telethon error
becomes a :class:`LoginError` with a message that says what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from telethon import errors

from core.telegram.client import TRANSPORT_ERRORS, apply_server
from core.telegram.session import ServerProfile, write_marker

Ask = Callable[[str, bool], str]  # (prompt, is_secret) -> answer


class LoginError(Exception):
    """Login or logout failed; ``str()`` is one clear line for the operator."""


def _wait_text(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds} s (about {round(seconds / 60)} min)"
    return f"{seconds} s (about {round(seconds / 3600)} h)"


def explain(exc: BaseException, server: str) -> str:
    """One line for an error of a login/logout step."""
    messages: list[tuple[type[BaseException], str]] = [
        (errors.PhoneCodeInvalidError, "the login code is wrong; run the login again"),
        (errors.PhoneCodeExpiredError, "the login code has expired; run the login again"),
        (errors.PasswordHashInvalidError, "the two-step verification password is wrong"),
        (errors.AccessTokenInvalidError, "the bot token is not valid (get it from @BotFather)"),
        (
            errors.AccessTokenExpiredError,
            "the bot token was revoked; get a new one",
        ),
        (errors.PhoneNumberInvalidError, "the phone number is not valid (use +<country><number>)"),
        (errors.PhoneNumberBannedError, "this phone number is banned by Telegram"),
        (errors.PhoneNumberUnoccupiedError, "no Telegram account uses this phone number"),
        (
            errors.ApiIdInvalidError,
            "VIGIL_TELEGRAM_API_ID / VIGIL_TELEGRAM_API_HASH are not valid (see my.telegram.org)",
        ),
    ]
    if isinstance(exc, errors.FloodError):
        seconds = int(getattr(exc, "seconds", 0))
        return f"Telegram asks to wait {_wait_text(seconds)} before the next try (flood wait)"
    for kind, text in messages:
        if isinstance(exc, kind):
            return text
    if isinstance(exc, errors.RPCError):
        return f"Telegram refused: {type(exc).__name__}: {exc}"
    if isinstance(exc, TRANSPORT_ERRORS):
        return f"cannot reach Telegram at {server} ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def describe(me: Any) -> str:
    kind = "bot" if getattr(me, "bot", False) else "user"
    name = getattr(me, "username", None) or getattr(me, "first_name", None) or "?"
    return f"{kind} @{name} (id {me.id})"


async def login(
    client: Any,
    *,
    profile: ServerProfile,
    session_path: Any,
    bot_token: str | None,
    ask: Ask,
) -> str:
    """Sign in with a bot token or phone + code (+ 2FA password); returns who."""
    try:
        apply_server(client, profile)
        await client.connect()
        # The key exchange made the session this server's, whether sign-in succeeds or not.
        write_marker(session_path, profile)
        if await client.is_user_authorized():
            return "already logged in as " + describe(await client.get_me())
        if bot_token:
            await client.sign_in(bot_token=bot_token)
        else:
            await _user_sign_in(client, ask)
        me = await client.get_me()
    except (*TRANSPORT_ERRORS, errors.RPCError) as exc:
        raise LoginError(explain(exc, profile.label)) from exc
    finally:
        await client.disconnect()
    write_marker(session_path, profile)
    return "logged in as " + describe(me)


async def _user_sign_in(client: Any, ask: Ask) -> None:
    phone = ask("Phone number of the account (international form, e.g. +441234567890)", False)
    if not phone.strip():
        raise LoginError("no phone number given")
    sent = await client.send_code_request(phone.strip())
    code = ask("The login code Telegram just sent you (in the Telegram app or by SMS)", False)
    try:
        await client.sign_in(
            phone=phone.strip(), code=code.strip(), phone_code_hash=sent.phone_code_hash
        )
    except errors.SessionPasswordNeededError:
        password = ask("Two-step verification password", True)
        await client.sign_in(password=password)


async def logout(client: Any, *, profile: ServerProfile) -> str:
    """Log the session out at Telegram; the caller deletes the files afterwards."""
    try:
        apply_server(client, profile)
        await client.connect()
        if not await client.is_user_authorized():
            return "the session was not logged in"
        me = await client.get_me()
        await client.log_out()
    except (*TRANSPORT_ERRORS, errors.RPCError) as exc:
        raise LoginError(explain(exc, profile.label)) from exc
    finally:
        await client.disconnect()
    return "logged out " + describe(me)
