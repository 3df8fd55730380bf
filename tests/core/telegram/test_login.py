"""Login and logout: the real scripts for the paths that need no network, and the
login flow against FakeTelegram (raising the real telethon errors) for the rest."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from telethon import errors

from core.config import Settings
from core.telegram.cli import CliFailure, run_login, run_logout
from core.telegram.session import ServerProfile, SessionLock, marker_path, write_marker
from tests.conftest import make_settings
from tests.fake_telegram import FakeTelegram

pytestmark = pytest.mark.slow  # the login/logout scripts as real processes

ROOT = Path(__file__).resolve().parents[3]


def script(name: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    clean.update(VIGIL_DATA_DIR=str(tmp_path / "data"), VIGIL_LOGS_DIR=str(tmp_path / "logs"))
    clean.update(env)
    return subprocess.run(
        [str(ROOT / "scripts" / name), *args],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


API = {"VIGIL_TELEGRAM_API_ID": "12345", "VIGIL_TELEGRAM_API_HASH": "0123456789abcdef"}


def test_login_without_api_id_and_hash_says_where_to_get_them(tmp_path: Path) -> None:
    result = script("telegram_login.sh", tmp_path)
    assert result.returncode == 2
    assert "VIGIL_TELEGRAM_API_ID and VIGIL_TELEGRAM_API_HASH must be set" in result.stderr
    assert "my.telegram.org" in result.stderr
    assert "Traceback" not in result.stderr


def test_login_with_a_malformed_server_names_the_variable(tmp_path: Path) -> None:
    result = script("telegram_login.sh", tmp_path, VIGIL_TELEGRAM_SERVER="149.154.167.40", **API)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vigil: VIGIL_TELEGRAM_SERVER: must be DC_ID@HOST:PORT such as 2@149.154.167.40:443 "
        "(got '149.154.167.40')"
    ]


def test_login_with_an_unreadable_key_file_says_so(tmp_path: Path) -> None:
    result = script(
        "telegram_login.sh", tmp_path, VIGIL_TELEGRAM_SERVER_KEY=str(tmp_path / "none.pem"), **API
    )
    assert result.returncode == 2
    assert "VIGIL_TELEGRAM_SERVER_KEY: cannot read" in result.stderr


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[SessionLock]:
    lock = SessionLock(tmp_path / "data" / "telegram.session")
    lock.acquire("the Vigil server")
    yield lock
    lock.release()


def test_login_and_logout_refuse_while_the_server_holds_the_session(
    tmp_path: Path, held_lock: SessionLock
) -> None:
    session = tmp_path / "data" / "telegram.session"
    session.write_bytes(b"not empty")
    for name in ("telegram_login.sh", "telegram_logout.sh"):
        result = script(name, tmp_path, **API)
        assert result.returncode == 3, result.stderr
        assert "in use by the Vigil server" in result.stderr
        assert "scripts/stop.sh" in result.stderr
    assert session.exists()


def test_logout_local_deletes_the_session_files(tmp_path: Path) -> None:
    session = tmp_path / "data" / "telegram.session"
    session.parent.mkdir(parents=True)
    session.write_bytes(b"x")
    write_marker(session, ServerProfile())
    result = script("telegram_logout.sh", tmp_path, "--local", **API)
    assert result.returncode == 0, result.stderr
    assert "deleted" in result.stdout
    assert not session.exists() and not marker_path(session).exists()
    again = script("telegram_logout.sh", tmp_path, **API)
    assert again.returncode == 0 and "no Telegram session" in again.stdout


# --- the login flow against FakeTelegram ------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, telegram_api_id=1, telegram_api_hash="hash")


def answers(*values: str) -> Any:
    it = iter(values)
    return lambda prompt, secret: next(it)


def login(
    settings: Settings, fake: FakeTelegram, *values: str, bot_token: str | None = None
) -> str:
    return run_login(settings, bot_token=bot_token, ask=answers(*values), factory=lambda s, p: fake)


def test_user_login_with_code_and_two_step_password(settings: Settings) -> None:
    fake = FakeTelegram(authorized=False, phone_code="24680", password="secret")
    line = login(settings, fake, "+441234567890", "24680", "secret")
    assert line == "logged in as bot @VigilBot (id 777)"
    assert marker_path(settings.session_path).exists()
    assert fake.connected is False  # the CLI disconnects


@pytest.mark.parametrize(
    ("script_it", "values", "expected"),
    [
        ({}, ("+441234567890", "00000"), "login failed: the login code is wrong"),
        (
            {"sign_in": errors.PhoneCodeExpiredError(request=None)},
            ("+441234567890", "24680"),
            "login failed: the login code has expired",
        ),
        ({}, ("+441234567890", "24680", "wrong"), "the two-step verification password is wrong"),
        (
            {"send_code_request": errors.FloodWaitError(request=None, capture=7200)},
            ("+441234567890",),
            "Telegram asks to wait 7200 s (about 2 h) before the next try (flood wait)",
        ),
        (
            {"send_code_request": errors.PhoneNumberInvalidError(request=None)},
            ("12",),
            "the phone number is not valid",
        ),
        (
            {"connect": ConnectionError("Connection to Telegram failed 3 time(s)")},
            (),
            "cannot reach Telegram at production",
        ),
    ],
)
def test_user_login_failures_are_one_clear_line(
    settings: Settings, script_it: dict[str, BaseException], values: tuple[str, ...], expected: str
) -> None:
    fake = FakeTelegram(authorized=False, phone_code="24680", password="secret")
    for method, exc in script_it.items():
        fake.fail(method, exc)
    with pytest.raises(CliFailure) as caught:
        login(settings, fake, *values)
    assert caught.value.code == 1
    assert expected in str(caught.value)
    # Once connected, the session belongs to this server even if sign-in fails.
    assert marker_path(settings.session_path).exists() == ("connect" not in script_it)


def test_bot_login_with_a_bad_token(settings: Settings) -> None:
    fake = FakeTelegram(authorized=False, bot_token="123:right")
    with pytest.raises(CliFailure, match="the bot token is not valid"):
        login(settings, fake, bot_token="123:wrong")
    assert login(settings, fake, bot_token="123:right") == "logged in as bot @VigilBot (id 777)"


def test_logout_logs_out_and_deletes_the_session(settings: Settings) -> None:
    settings.session_path.parent.mkdir(parents=True, exist_ok=True)
    settings.session_path.write_bytes(b"x")
    fake = FakeTelegram(authorized=True)
    line = run_logout(settings, local=False, factory=lambda s, p: fake)
    assert line == "logged out bot @VigilBot (id 777)"
    assert fake.authorized is False
    assert not settings.session_path.exists()


def test_logout_that_cannot_reach_telegram_keeps_the_session(settings: Settings) -> None:
    settings.session_path.parent.mkdir(parents=True, exist_ok=True)
    settings.session_path.write_bytes(b"x")
    fake = FakeTelegram()
    fake.connect_error = OSError("Network is unreachable")
    with pytest.raises(CliFailure, match="the session was kept") as caught:
        run_logout(settings, local=False, factory=lambda s, p: fake)
    assert caught.value.code == 1
    assert settings.session_path.exists()
