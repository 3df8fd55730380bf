"""Telegram's test environment and custom MTProto servers."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rsa
from telethon.crypto import rsa as telethon_rsa

from core.app import create_app
from core.config import ConfigError, load_settings
from core.telegram.cli import CliFailure, run_login
from core.telegram.gateway import TelegramGateway
from core.telegram.session import (
    TEST_SERVER,
    ServerProfile,
    check_session_server,
    load_server_key,
    parse_server,
    server_profile,
    write_marker,
)
from tests.conftest import make_settings
from tests.fake_telegram import FakeTelegram


@pytest.fixture(scope="module")
def public_key() -> rsa.PublicKey:
    return rsa.newkeys(512)[0]


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 128:
        return bytes([tag, size]) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + body


def openssl_pem(key: rsa.PublicKey) -> bytes:
    """The "BEGIN PUBLIC KEY" (SubjectPublicKeyInfo) form, which rsa cannot write."""
    algorithm = bytes.fromhex("300d06092a864886f70d0101010500")  # rsaEncryption, NULL
    info = _der(0x30, algorithm + _der(0x03, b"\0" + key.save_pkcs1(format="DER")))
    body = base64.encodebytes(info).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"
    ).encode()


def key_file(tmp_path: Path, key: rsa.PublicKey, *, openssl: bool = False) -> Path:
    path = tmp_path / "server.pem"
    path.write_bytes(openssl_pem(key) if openssl else key.save_pkcs1())
    return path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2@149.154.167.40:443", (2, "149.154.167.40", 443)),
        ("4@mtproto.example.org:8443", (4, "mtproto.example.org", 8443)),
        ("1@[2001:db8::1]:80", (1, "2001:db8::1", 80)),
    ],
)
def test_server_values_in_the_expected_form_parse(value: str, expected: tuple) -> None:
    assert parse_server(value) == expected


@pytest.mark.parametrize(
    "value", ["149.154.167.40:443", "2@149.154.167.40", "x@host:443", "2@host:0", "2@host:70000"]
)
def test_malformed_server_values_stop_start_up_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^VIGIL_TELEGRAM_SERVER: must be DC_ID@HOST:PORT"):
        load_settings(_env_file=None, telegram_server=value)


def test_test_mode_is_shorthand_for_telegrams_test_dc(tmp_path: Path) -> None:
    profile = server_profile(make_settings(tmp_path, telegram_test_mode=True))
    assert profile.label == TEST_SERVER and profile.test_mode
    explicit = make_settings(tmp_path, telegram_test_mode=True, telegram_server="1@10.0.0.1:80")
    assert server_profile(explicit).label == "1@10.0.0.1:80"  # an explicit server wins
    assert server_profile(make_settings(tmp_path)).label == "production"


def test_key_files_in_both_pem_forms_load(tmp_path: Path, public_key: rsa.PublicKey) -> None:
    for openssl in (False, True):
        pem = load_server_key(key_file(tmp_path, public_key, openssl=openssl))
        assert rsa.PublicKey.load_pkcs1(pem) == public_key


def test_unreadable_or_invalid_key_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^VIGIL_TELEGRAM_SERVER_KEY: cannot read .*missing"):
        load_server_key(tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN RSA PUBLIC KEY-----\nnot base64!\n-----END RSA PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match="is not a PEM RSA public key"):
        load_server_key(bad)


def test_gateway_pins_the_dc_and_registers_the_key_before_the_first_connect(
    tmp_path: Path, public_key: rsa.PublicKey
) -> None:
    settings = make_settings(
        tmp_path,
        telegram_server="2@149.154.167.40:443",
        telegram_server_key=key_file(tmp_path, public_key),
    )
    fake = FakeTelegram()
    gateway = TelegramGateway(settings, fake, profile=server_profile(settings))

    async def connected() -> None:
        while gateway.state != "connected":
            await asyncio.sleep(0.01)

    async def run() -> None:
        await gateway.start()
        await asyncio.wait_for(connected(), 10)
        await gateway.stop()

    asyncio.run(run())
    fingerprint = telethon_rsa._compute_fingerprint(public_key)
    assert fake.dc_at_connect[0] == (2, "149.154.167.40", 443)
    assert fingerprint in fake.key_fingerprints_at_connect[0]
    status = gateway.status()["server"]
    assert status == {
        "server": "2@149.154.167.40:443",
        "dc": 2,
        "host": "149.154.167.40",
        "port": 443,
        "custom_key": True,
        "test_mode": False,
    }
    assert (tmp_path / "data" / "telegram.session.server").exists()  # the session remembers


def test_a_session_with_its_own_key_keeps_its_dc(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, telegram_test_mode=True)
    fake = FakeTelegram()
    fake.session.auth_key = object()  # logged in earlier, maybe migrated to another test DC
    gateway = TelegramGateway(settings, fake, profile=server_profile(settings))

    async def run() -> None:
        await gateway.start()
        await gateway.stop()

    asyncio.run(run())
    assert fake.session.set_dc_calls == []


def test_switching_server_with_an_existing_session_asks_for_a_logout(tmp_path: Path) -> None:
    session = tmp_path / "telegram.session"
    session.write_bytes(b"sqlite")
    write_marker(session, ServerProfile())  # made for production
    test_env = server_profile(make_settings(tmp_path, telegram_test_mode=True))
    with pytest.raises(ConfigError, match="created for Telegram server production") as caught:
        check_session_server(session, test_env)
    assert "Log out first with scripts/telegram_logout.sh" in str(caught.value)
    check_session_server(session, ServerProfile())  # same server: fine
    check_session_server(tmp_path / "absent.session", test_env)  # no session: fine


def test_the_app_and_the_login_refuse_a_session_of_another_server(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, telegram_api_id=1, telegram_api_hash="h", telegram_test_mode=True
    )
    settings.data_dir.mkdir(parents=True)
    settings.session_path.write_bytes(b"sqlite")  # an old session without a marker: production
    app = create_app(settings, telegram=FakeTelegram())

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ConfigError, match="Log out first"):
        asyncio.run(start())
    with pytest.raises(CliFailure, match="Log out first") as caught:
        run_login(
            settings, bot_token=None, ask=lambda p, s: "", factory=lambda s, p: FakeTelegram()
        )
    assert caught.value.code == 2


def test_the_real_client_keeps_its_session_private(tmp_path: Path) -> None:
    from core.telegram.client import make_client

    settings = make_settings(tmp_path, telegram_api_id=1, telegram_api_hash="h")

    async def build() -> None:
        client = make_client(settings, server_profile(settings))
        assert client.flood_sleep_threshold == 0  # flood waits are ours to handle
        client.session.close()

    asyncio.run(build())
    assert settings.session_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_serve_stops_with_one_line_for_a_bad_key_or_another_servers_session(
    tmp_path: Path,
) -> None:
    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_DATA_DIR=str(tmp_path / "data"),
        VIGIL_LOGS_DIR=str(tmp_path / "logs"),
        VIGIL_PORT="1",
        VIGIL_TELEGRAM_API_ID="1",
        VIGIL_TELEGRAM_API_HASH="h",
    )

    def serve(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(root / "main.py"), "serve"],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    bad_key = serve(VIGIL_TELEGRAM_SERVER_KEY=str(tmp_path / "nope.pem"))
    assert bad_key.returncode == 2
    assert bad_key.stderr.startswith("vigil: VIGIL_TELEGRAM_SERVER_KEY: cannot read")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "telegram.session").write_bytes(b"sqlite")
    switched = serve(VIGIL_TELEGRAM_TEST_MODE="true")
    assert switched.returncode == 2
    assert len(switched.stderr.strip().splitlines()) == 1
    assert "Log out first" in switched.stderr
