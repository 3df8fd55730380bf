"""What a snapshot holds besides the database: the Telegram session and the settings files.

A restore must bring the whole service back, so a snapshot also keeps, when
they exist:

- ``session``: ``data/telegram.session`` (a consistent copy through SQLite's
  backup API: the server may be writing it), and ``session_marker``, the small
  file that says which Telegram server the session was made for;
- ``env``: the ``.env`` file Vigil reads (in the directory Vigil starts from);
- ``config``: the file named by ``VIGIL_CONFIG_FILE`` (JSON or TOML).

Settings files are copied *without secrets* unless the operator asks for them
(``vigilctl backup --with-secrets``): the value of every secret setting
(``core.config.SECRET_FIELDS``) and the password of every URL setting
(``SECRET_URL_FIELDS``) is replaced by ``core.config.SECRET_PLACEHOLDER``,
which the configuration refuses to start with, so a restored file must be
filled in before use. Settings given as real environment variables (e.g. a
systemd unit's ``Environment=``) are not files and are not in a snapshot.

Each extra is a file ``NAME<suffix>`` next to ``NAME.db.gz``, mode 0600, and
is described (sha256, size, source path, redacted or not) in the manifest's
``files``; snapshots made before this have no ``files`` and restore as before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
import urllib.parse
from pathlib import Path

from core.backups.backup import Extras, Snapshot, read_extra
from core.config import (
    ENV_PREFIX,
    SECRET_FIELDS,
    SECRET_PLACEHOLDER,
    SECRET_URL_FIELDS,
    Settings,
)
from core.files import write_private

log = logging.getLogger(__name__)

_ENV_LINE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)(.*?)(\s*)$")
_TOML_LINE = re.compile(r"^(\s*)(\"?)([A-Za-z_][A-Za-z0-9_]*)(\"?\s*=\s*)(.*?)(\s*)$")


def env_file_path() -> Path:
    """The ``.env`` Vigil reads: relative to the directory it starts from."""
    return Path(str(Settings.model_config.get("env_file") or ".env")).resolve()


def config_file_path(settings: Settings) -> Path | None:
    path = settings.config_file or os.environ.get(ENV_PREFIX + "CONFIG_FILE")
    return Path(path).resolve() if path else None


def _setting_name(key: str) -> str:
    key = key.strip().strip('"').strip("'")
    return (key[len(ENV_PREFIX) :] if key.upper().startswith(ENV_PREFIX) else key).lower()


# Webhook URLs carry their token in the path or query (Slack, Discord, ntfy):
# all of it after the host is the secret (``vigilctl config`` shows it as *** too).
SECRET_PATH_URL_FIELDS = ("alert_webhook_url",)


def _redact_url(url: str, *, path_too: bool = False) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return SECRET_PLACEHOLDER if path_too else url
    if path_too and (parts.path.strip("/") or parts.query or parts.fragment):
        parts = parts._replace(path="/" + SECRET_PLACEHOLDER, query="", fragment="")
    if password:
        user, _, host = parts.netloc.rpartition("@")
        name = user.split(":", 1)[0]
        parts = parts._replace(netloc=f"{name}:{SECRET_PLACEHOLDER}@{host}")
    return urllib.parse.urlunsplit(parts)


def _redact_profiles(profiles: object) -> object:
    """VIGIL_LLM_MODELS with each profile's api_key (and URL password) replaced."""
    if not isinstance(profiles, dict):
        return profiles
    result: dict[str, object] = {}
    for name, spec in profiles.items():
        if isinstance(spec, dict):
            spec = dict(spec)
            if isinstance(spec.get("api_key"), str) and spec["api_key"]:
                spec["api_key"] = SECRET_PLACEHOLDER
            if isinstance(spec.get("base_url"), str):
                spec["base_url"] = _redact_url(spec["base_url"], path_too=False)
        result[name] = spec
    return result


def _redacted_value(setting: str, raw: str) -> str | None:
    """The replacement for one value (quotes kept), or None when it is no secret."""
    quote = raw[0] if raw[:1] in ("'", '"') and raw.endswith(raw[0]) and len(raw) > 1 else ""
    inner = raw[1:-1] if quote else raw
    if setting == "llm_models" and inner:
        try:
            profiles = json.loads(inner)
        except ValueError:  # unreadable: keep nothing of it
            return f"{quote}{SECRET_PLACEHOLDER}{quote}"
        redacted = json.dumps(_redact_profiles(profiles))
        return None if redacted == json.dumps(profiles) else f"{quote}{redacted}{quote}"
    if setting in SECRET_FIELDS:
        return f"{quote}{SECRET_PLACEHOLDER}{quote}" if inner else None
    if setting in SECRET_URL_FIELDS:
        redacted = _redact_url(inner, path_too=setting in SECRET_PATH_URL_FIELDS)
        return None if redacted == inner else f"{quote}{redacted}{quote}"
    return None


def redact_env(text: str) -> str:
    """A ``.env`` with every secret value replaced by the placeholder."""
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body) :]
        match = _ENV_LINE.match(body)
        if match and not body.lstrip().startswith("#"):
            pre, key, eq, value, post = match.groups()
            new = _redacted_value(_setting_name(key), value)
            if new is not None:
                body = f"{pre}{key}{eq}{new}{post}"
        out.append(body + end)
    return "".join(out)


def _redact_mapping(data: dict[str, object]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in data.items():
        setting = _setting_name(key)
        if isinstance(value, str) and setting in SECRET_FIELDS and value:
            value = SECRET_PLACEHOLDER
        elif isinstance(value, str) and setting in SECRET_URL_FIELDS:
            value = _redact_url(value, path_too=setting in SECRET_PATH_URL_FIELDS)
        elif setting == "llm_models" and isinstance(value, str):
            value = _redacted_value(setting, value) or value
        elif setting == "llm_models":
            value = _redact_profiles(value)
        result[key] = value
    return result


def redact_config(text: str, suffix: str) -> str:
    """A JSON or TOML config file with secret values replaced by the placeholder."""
    if suffix.lower() != ".toml":
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return json.dumps(_redact_mapping(data), indent=2) + "\n"
        return redact_env(text)  # unreadable: at least no KEY=VALUE secret survives
    out = []
    in_profile = False  # inside a [llm_models.NAME] table
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body) :]
        if body.lstrip().startswith("["):
            in_profile = body.strip().strip("[]").strip().startswith("llm_models")
        match = _TOML_LINE.match(body)
        if match and not body.lstrip().startswith("#"):
            indent, q1, key, eq, value, post = match.groups()
            setting = _setting_name(key)
            if in_profile:  # a profile's api_key is a secret, its base_url a URL
                setting = {"api_key": "llm_api_key", "base_url": "llm_base_url"}.get(setting, "")
            new = _redacted_value(setting, value)
            if new is not None:
                body = f"{indent}{q1}{key}{eq}{new}{post}"
        out.append(body + end)
    return "".join(out)


def _session_bytes(path: Path) -> bytes:
    """A consistent copy of a SQLite session file (raw bytes if it is not one)."""
    try:
        src = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
        try:
            mem = sqlite3.connect(":memory:")
            try:
                src.backup(mem)
                return mem.serialize()
            finally:
                mem.close()
        finally:
            src.close()
    except sqlite3.DatabaseError:
        return path.read_bytes()


def collect_extras(settings: Settings, *, with_secrets: bool) -> Extras:
    """role -> (content, manifest description) of every extra that exists now."""
    found: Extras = {}
    session = settings.session_path
    if session.is_file() and session.stat().st_size > 0:
        found["session"] = (_session_bytes(session), {"source": str(session.resolve())})
        marker = session.with_name(session.name + ".server")
        if marker.is_file():
            found["session_marker"] = (marker.read_bytes(), {"source": str(marker.resolve())})
    env = env_file_path()
    if env.is_file():
        text = env.read_text(encoding="utf-8", errors="replace")
        content = text if with_secrets else redact_env(text)
        found["env"] = (
            content.encode("utf-8"),
            {"source": str(env), "secrets": with_secrets},
        )
    config = config_file_path(settings)
    if config is not None and config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        content = text if with_secrets else redact_config(text, config.suffix)
        found["config"] = (
            content.encode("utf-8"),
            {"source": str(config), "secrets": with_secrets, "format": config.suffix.lower()},
        )
    return found


def _keep_aside(path: Path, stamp: str) -> Path:
    aside = path.with_name(f"{path.name}.before-restore-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.before-restore-{stamp}.{n}")
        n += 1
    os.replace(path, aside)
    return aside


def _write_private(path: Path, content: bytes) -> None:
    write_private(path, content, tmp=path.with_name(f".{path.name}.restore-tmp"))


def restore_extras(
    snapshot: Snapshot,
    settings: Settings,
    *,
    session: bool,
    settings_files: bool,
    now: float,
) -> list[str]:
    """Put the snapshot's session and settings files back; one line per file for the operator.

    A file is restored when the operator asks (``session`` / ``settings_files``)
    or when it is missing now; an existing one is then kept aside as
    ``NAME.before-restore-<UTC time>``, never overwritten silently.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    lines: list[str] = []
    targets: list[tuple[str, Path | None, bool, str]] = [
        ("session", settings.session_path, session, "--session"),
        (
            "session_marker",
            settings.session_path.with_name(settings.session_path.name + ".server"),
            session,
            "--session",
        ),
        ("env", env_file_path(), settings_files, "--settings"),
        ("config", config_file_path(settings), settings_files, "--settings"),
    ]
    session_restored = False
    for role, target, asked, flag in targets:
        entry = snapshot.files.get(role)
        if entry is None:
            continue
        if target is None:  # a config file then, none configured now: back where it was
            target = Path(str(entry.get("source") or ""))
            if not str(target):
                continue
        if role == "session_marker":
            asked = asked or session_restored  # the marker follows its session
        missing = not target.exists() or (role == "session" and target.stat().st_size == 0)
        if not (asked or missing):
            lines.append(f"kept the current {target} (add {flag} to restore the snapshot's)")
            continue
        content = read_extra(snapshot, role)
        target.parent.mkdir(parents=True, exist_ok=True)
        aside = None if missing or not target.exists() else _keep_aside(target, stamp)
        _write_private(target, content)
        session_restored = session_restored or role == "session"
        line = f"restored {target} from the snapshot"
        if aside is not None:
            line += f" (previous file kept as {aside.name})"
        if role in ("env", "config") and not entry.get("secrets"):
            line += (
                f"; it was saved without secrets: replace {SECRET_PLACEHOLDER} with the real "
                "values before starting"
            )
        lines.append(line)
    return lines
