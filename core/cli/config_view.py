"""``vigilctl config`` (the effective settings and where each came from) and ``--version``.

The sources are the ones :class:`core.config.Settings` reads, highest first:
the environment, ``.env`` in the working directory, the file named by
``VIGIL_CONFIG_FILE``, the default. Secrets are never printed: a secret that
is set shows as ``***``, a password inside a URL as ``user:***@host``.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr

from core import __version__
from core.cli.output import JSON_OPT, cli_settings, guarded, print_json, show_table
from core.config import ENV_PREFIX, Settings, _read_config_file

MASK = "***"
# Plain (not SecretStr) settings that may carry a password in their URL.
URL_SETTINGS = ("huey_redis_url", "llm_base_url", "alert_webhook_url", "stt_base_url")
# Webhook URLs carry their secret in the path or query (Slack, Discord, ntfy tokens).
SECRET_PATH_SETTINGS = ("alert_webhook_url",)


def version_text() -> str:
    """``Vigil 0.1.0 (Python 3.11.2, SQLite 3.40.1)``."""
    return (
        f"Vigil {__version__} (Python {platform.python_version()}, SQLite {sqlite3.sqlite_version})"
    )


def _env_file() -> Path:
    """The ``.env`` Settings reads: relative to the working directory (vigilctl: the install)."""
    env_file = Settings.model_config.get("env_file") or ".env"
    return Path(str(env_file)).resolve()


def _lower_keys(values: dict[str, Any]) -> dict[str, Any]:
    # pydantic-settings matches variable names case-insensitively
    return {k.lower(): v for k, v in values.items() if v is not None}


def _dotenv_values(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return _lower_keys(dict(dotenv_values(path, encoding="utf-8")))


def setting_sources(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Which source gave each field (``environment``, ``.env``, ``config file``, ``default``)."""
    env = _lower_keys(dict(os.environ if environ is None else environ))
    env_file = _env_file()
    dotenv = _dotenv_values(env_file)
    config_path = env.get(ENV_PREFIX.lower() + "config_file")
    config = _read_config_file(config_path) if config_path else {}
    sources: dict[str, str] = {}
    for field in Settings.model_fields:
        key = ENV_PREFIX.lower() + field
        if key in env:
            sources[field] = "environment"
        elif key in dotenv:
            sources[field] = ".env"
        elif field in config:
            sources[field] = "config file"
        else:
            sources[field] = "default"
    return {
        "fields": sources,
        "env_file": str(env_file) if env_file.is_file() else None,
        "config_file": str(Path(config_path).resolve()) if config_path else None,
    }


def _mask_url(url: str, *, path_too: bool = False) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{user}:{MASK}@{host}")
        if path_too and (parts.path.strip("/") or parts.query):
            parts = parts._replace(path="/" + MASK, query="", fragment="")
        elif parts.query:  # ?api_key=...: the names stay, the values may be secrets
            names = [name for name, _ in urllib.parse.parse_qsl(parts.query, True)]
            parts = parts._replace(query="&".join(f"{name}={MASK}" for name in names))
        return urllib.parse.urlunsplit(parts)
    except ValueError:
        return MASK  # unparseable: show nothing of it rather than a secret


def _mask_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """A model profile as ``config`` shows it: the API key ``***``, the URL masked."""
    shown = dict(spec)
    if shown.get("api_key"):
        shown["api_key"] = MASK
    if isinstance(shown.get("base_url"), str):
        shown["base_url"] = _mask_url(shown["base_url"])
    return shown


def shown_value(settings: Settings, field: str) -> Any:
    """A field's value as ``config`` prints it (JSON-able, secrets masked)."""
    value = getattr(settings, field)
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if field == "llm_models" and isinstance(value, dict):
        return {name: _mask_profile(spec) for name, spec in value.items()}
    if field in URL_SETTINGS and isinstance(value, str):
        return _mask_url(value, path_too=field in SECRET_PATH_SETTINGS)
    if isinstance(value, Path):
        return str(value)
    return value


def effective_config(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, Any]:
    found = setting_sources(environ)
    shown = {
        ENV_PREFIX + field.upper(): {
            "value": shown_value(settings, field),
            "source": found["fields"][field],
        }
        for field in Settings.model_fields
    }
    token = shown[ENV_PREFIX + "ADMIN_TOKEN"]
    if not token["value"] and settings.admin_token_file.is_file():
        # not configured (or empty): the server uses the one it generated on its first start
        token.update(value=MASK, source=f"generated ({settings.admin_token_file})")
    return {
        "version": __version__,
        "env_file": found["env_file"],
        "config_file": found["config_file"],
        "settings": shown,
    }


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


@guarded
def config(
    changed: bool = typer.Option(
        False, "--changed", help="Only the settings that are not at their default."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """The effective settings and where each came from (secrets shown as ***)."""
    settings = cli_settings()  # a bad setting: one line naming it, exit 2
    report = effective_config(settings)
    if changed:
        report["settings"] = {
            name: item for name, item in report["settings"].items() if item["source"] != "default"
        }
    if as_json:
        print_json(report)
        return
    files = [
        f".env: {report['env_file'] or 'none'}",
        f"VIGIL_CONFIG_FILE: {report['config_file'] or 'none'}",
    ]
    show_table(
        f"Vigil {report['version']} settings ({'; '.join(files)})",
        ("setting", "value", "source"),
        [(name, _cell(item["value"]), item["source"]) for name, item in report["settings"].items()],
        empty="every setting is at its default",
    )


def register(cli: typer.Typer) -> None:
    cli.command("config")(config)
