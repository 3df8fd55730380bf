"""Snapshots on VIGIL_BACKUP_DIR with the session and settings files; restore latest."""

from __future__ import annotations

import gzip
import json
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.backups.extras import redact_config, redact_env
from core.config import SECRET_PLACEHOLDER, ConfigError, Settings, load_settings
from tests.operator_cli import MAIN, cli_env, fill

SECRETS = ("tok-SECRET-1", "sk-SECRET-2", "hash-SECRET-3", "pw-SECRET-4")
ENV = (
    "# operator's settings\n"
    f"VIGIL_LLM_API_KEY={SECRETS[1]}\n"
    f"export VIGIL_TELEGRAM_API_HASH='{SECRETS[2]}'\n"
    f'VIGIL_HUEY_REDIS_URL="redis://vigil:{SECRETS[3]}@127.0.0.1:6379/0"\n'
    "VIGIL_LOG_LEVEL=INFO\n"
    "VIGIL_SYSTEM_PROMPT=keep me\n"
)
TOML = f'admin_token = "{SECRETS[0]}"\nllm_model = "fake"\n'


def vigil(settings: Settings, *args: str, **env: Any) -> Any:
    return subprocess.run(
        [sys.executable, str(MAIN), *args],
        env=cli_env(settings, **env),
        cwd=settings.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def make_session(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE sessions (dc_id INTEGER, auth_key BLOB)")
    conn.execute("INSERT INTO sessions VALUES (2, x'00112233')")
    conn.commit()
    conn.close()
    path.chmod(0o600)


def session_rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT * FROM sessions"))
    finally:
        conn.close()


def test_redaction_keeps_everything_but_the_secrets() -> None:
    redacted = redact_env(ENV)
    for secret in SECRETS:
        assert secret not in redacted
    assert f"VIGIL_LLM_API_KEY={SECRET_PLACEHOLDER}\n" in redacted
    assert f"export VIGIL_TELEGRAM_API_HASH='{SECRET_PLACEHOLDER}'" in redacted
    assert f'"redis://vigil:{SECRET_PLACEHOLDER}@127.0.0.1:6379/0"' in redacted
    assert "VIGIL_SYSTEM_PROMPT=keep me\n" in redacted and redacted.startswith("# operator's")
    toml = redact_config(TOML, ".toml")
    assert SECRETS[0] not in toml and f'admin_token = "{SECRET_PLACEHOLDER}"' in toml
    as_json = json.loads(
        redact_config(json.dumps({"VIGIL_ADMIN_TOKEN": SECRETS[0], "port": 9001}), ".json")
    )
    assert as_json == {"VIGIL_ADMIN_TOKEN": SECRET_PLACEHOLDER, "port": 9001}


def test_a_webhook_urls_token_in_its_path_or_query_is_a_secret() -> None:
    # Slack/Discord/ntfy keep the token in the path or the query: the snapshot's
    # settings file kept it in clear (vigilctl config already showed it as ***).
    env = (
        "VIGIL_ALERT_WEBHOOK_URL=https://hooks.slack.com/services/T0/B0/hookSECRET5\n"
        "VIGIL_LOG_LEVEL=INFO\n"
    )
    redacted = redact_env(env)
    assert "hookSECRET5" not in redacted and "T0/B0" not in redacted
    placeholder = f"https://hooks.slack.com/{SECRET_PLACEHOLDER}"
    assert f"VIGIL_ALERT_WEBHOOK_URL={placeholder}\n" in redacted
    assert redacted.endswith("VIGIL_LOG_LEVEL=INFO\n")
    as_json = json.loads(
        redact_config(
            json.dumps({"alert_webhook_url": "https://ntfy.example/alerts?auth=qSECRET6"}), ".json"
        )
    )
    assert as_json == {"alert_webhook_url": f"https://ntfy.example/{SECRET_PLACEHOLDER}"}
    # a webhook without a path or query keeps its value (nothing secret in it)
    assert redact_env("VIGIL_ALERT_WEBHOOK_URL=http://127.0.0.1:9000\n").endswith(":9000\n")


def test_the_placeholder_is_refused_as_a_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VIGIL_LLM_API_KEY still holds the placeholder"):
        load_settings(_env_file=None, data_dir=tmp_path, llm_api_key=SECRET_PLACEHOLDER)
    with pytest.raises(ConfigError, match="VIGIL_HUEY_REDIS_URL"):
        load_settings(
            _env_file=None,
            data_dir=tmp_path,
            huey_redis_url=f"redis://u:{SECRET_PLACEHOLDER}@127.0.0.1:6379/0",
        )


def test_the_speech_to_text_key_and_url_password_are_secrets_too(tmp_path: Path) -> None:
    env = (
        "VIGIL_STT_API_KEY=sk-stt-SECRET7\n"
        "VIGIL_STT_BASE_URL=https://whisper:pwSECRET8@stt.example/v1\n"
        "VIGIL_STT_MODEL=whisper-1\n"
    )
    redacted = redact_env(env)
    assert "SECRET7" not in redacted and "SECRET8" not in redacted
    assert f"VIGIL_STT_API_KEY={SECRET_PLACEHOLDER}\n" in redacted
    assert f"https://whisper:{SECRET_PLACEHOLDER}@stt.example/v1" in redacted
    assert redacted.endswith("VIGIL_STT_MODEL=whisper-1\n")
    toml = redact_config('stt_api_key = "sk-stt-SECRET7"\nstt_model = "w"\n', ".toml")
    assert "SECRET7" not in toml and f'stt_api_key = "{SECRET_PLACEHOLDER}"' in toml
    with pytest.raises(ConfigError, match="VIGIL_STT_API_KEY still holds the placeholder"):
        load_settings(_env_file=None, data_dir=tmp_path, stt_api_key=SECRET_PLACEHOLDER)


@pytest.mark.slow
def test_snapshots_on_backup_dir_hold_session_and_settings_and_restore_latest(
    tsettings: Settings, tmp_path: Path
) -> None:
    root = tsettings.data_dir.parent
    fill(tsettings.db_path, 40)
    session = tsettings.session_path
    make_session(session)
    (root / ".env").write_text(ENV)
    config = root / "vigil.toml"
    config.write_text(TOML)
    other_disk = tmp_path / "other-disk" / "vigil-backups"
    env = {"backup_dir": other_disk, "config_file": config}

    plain = vigil(tsettings, "backup", "--name", "plain", **env)
    assert plain.returncode == 0, plain.stderr
    assert "also kept: config, env, session (secrets replaced by a placeholder" in plain.stdout
    full = vigil(tsettings, "backup", "--name", "full", "--with-secrets", **env)
    assert full.returncode == 0, full.stderr
    assert not (tsettings.data_dir / "backups").exists()  # all of it on the other disk

    files = sorted(p.name for p in other_disk.iterdir() if not p.name.startswith("."))
    for name in ("plain", "full"):
        for suffix in (".db.gz", ".json", ".session", ".env", ".config"):
            assert name + suffix in files
    for path in other_disk.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    plain_text = (other_disk / "plain.env").read_text() + (other_disk / "plain.config").read_text()
    for secret in SECRETS:
        assert secret not in plain_text
        assert secret.encode() not in gzip.decompress((other_disk / "plain.db.gz").read_bytes())
    assert "VIGIL_SYSTEM_PROMPT=keep me" in plain_text
    assert (other_disk / "full.env").read_text() == ENV
    assert (other_disk / "full.config").read_text() == TOML
    manifest = json.loads((other_disk / "plain.json").read_text())
    assert manifest["files"]["env"]["secrets"] is False
    assert manifest["files"]["session"]["source"] == str(session.resolve())
    assert session_rows(other_disk / "plain.session") == [(2, b"\x00\x11\x22\x33")]

    listed = vigil(tsettings, "snapshots", "--verify", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    assert [s["name"] for s in json.loads(listed.stdout)] == ["full", "plain"]
    checked = vigil(tsettings, "validate", "--json", **env)
    assert checked.returncode == 0, checked.stdout
    verdict = {c["name"]: c for c in json.loads(checked.stdout)["checks"]}
    assert verdict["backups"]["status"] == "ok" and "full" in verdict["backups"]["detail"]
    assert verdict["backup_runs"]["status"] == "ok"

    # The newest ("full") is damaged: restore latest takes "plain", says so.
    (other_disk / "full.db.gz").write_bytes(b"not gzip")
    session.unlink()  # missing now: restored without asking
    fill(tsettings.db_path, 5)  # a change the restore rolls back
    restored = vigil(tsettings, "restore", "latest", "--confirm", **env)
    assert restored.returncode == 0, restored.stderr
    assert "skipped full" in restored.stderr
    assert "restored plain to" in restored.stdout and "(40 messages)" in restored.stdout
    assert f"restored {session}" in restored.stdout
    assert session_rows(session) == [(2, b"\x00\x11\x22\x33")]
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    # The operator's .env and config file exist: kept, never silently overwritten.
    assert f"kept the current {root / '.env'} (add --settings" in restored.stdout
    assert (root / ".env").read_text() == ENV and config.read_text() == TOML

    again = vigil(tsettings, "restore", "latest", "--confirm", "--settings", **env)
    assert again.returncode == 0, again.stderr
    assert f"replace {SECRET_PLACEHOLDER} with the real values" in again.stdout
    assert SECRETS[1] not in (root / ".env").read_text()
    kept = sorted(root.glob(".env.before-restore-*"))
    assert len(kept) == 1 and kept[0].read_text() == ENV
    # The restored settings refuse to start until the secrets are filled in.
    refused = vigil(tsettings, "validate", **env)
    assert refused.returncode == 2
    assert "still holds the placeholder" in refused.stderr and "Traceback" not in refused.stderr


def test_latest_is_reserved_and_needs_a_verified_snapshot(tsettings: Settings) -> None:
    fill(tsettings.db_path, 3)
    named = vigil(tsettings, "backup", "--name", "latest")
    assert named.returncode == 2 and "reserved" in named.stderr
    none = vigil(tsettings, "restore", "latest", "--confirm")
    assert none.returncode == 1
    assert none.stderr.strip().startswith("vigil: no verified snapshot in ")
    assert len(none.stderr.strip().splitlines()) == 1
    nowhere = tsettings.data_dir.parent / "nowhere"
    listed = vigil(tsettings, "snapshots", backup_dir=nowhere)
    assert listed.returncode == 0
    assert f"backup directory {nowhere} does not exist (VIGIL_BACKUP_DIR)" in listed.stderr
    # a file where the directory should be is not created by the next backup: it fails
    blocker = tsettings.data_dir.parent / "a-file"
    blocker.write_text("x")
    listed = vigil(tsettings, "snapshots", backup_dir=blocker)
    assert listed.returncode == 0
    assert f"backup directory {blocker} is not a directory (VIGIL_BACKUP_DIR)" in listed.stderr
    assert "creates it" not in listed.stderr and "backups fail" in listed.stderr
