"""Vigil's one Settings object.

Every setting is an environment variable with the ``VIGIL_`` prefix, may be
given in an optional ``.env`` file or in a JSON/TOML config file named by
``VIGIL_CONFIG_FILE``; precedence is env > .env > config file > defaults.
Only entry points build ``Settings`` (see :func:`load_settings`); everything
else receives it. Every field is documented in ``docs/configuration.md`` (a
test enforces that).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import tomllib
import urllib.parse
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "VIGIL_"
# Settings whose whole value is secret, and URLs whose password is: a snapshot's
# copy of the settings file replaces them with SECRET_PLACEHOLDER unless the
# operator asks for them (``vigilctl backup --with-secrets``).
SECRET_FIELDS = (
    "admin_token",
    "llm_api_key",
    "telegram_api_hash",
    "telegram_bot_token",
    "stt_api_key",
)
SECRET_URL_FIELDS = ("huey_redis_url", "llm_base_url", "alert_webhook_url", "stt_base_url")
SECRET_PLACEHOLDER = "VIGIL-SECRET-NOT-IN-BACKUP"
_SCHEDULE_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
MAX_TOKENS_SETTING = 2**62  # budgets: beyond SQLite sums, a typo
_SERVER_RE = re.compile(r"^(\d{1,3})@([^:@\s]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")


class ConfigError(Exception):
    """A setting has a bad value; ``str()`` is one line naming the variable."""


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the JSON or TOML file named by ``VIGIL_CONFIG_FILE``."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self._data = _read_config_file(path) if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        known = set(self.settings_cls.model_fields)
        unknown = sorted(set(self._data) - known)
        if unknown:
            raise ConfigError(
                f"VIGIL_CONFIG_FILE: unknown setting(s) {', '.join(unknown)} "
                "(see docs/configuration.md)"
            )
        return dict(self._data)


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"VIGIL_CONFIG_FILE: cannot read {path}: {exc.strerror}") from exc
    try:
        if file.suffix.lower() == ".toml":
            data: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"VIGIL_CONFIG_FILE: {path} is not valid JSON/TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"VIGIL_CONFIG_FILE: {path} must hold a table/object of settings")
    # Accept both "port" and "VIGIL_PORT" spellings in the file.
    return {
        (k[len(ENV_PREFIX) :] if k.upper().startswith(ENV_PREFIX) else k).lower(): v
        for k, v in data.items()
    }


class Settings(BaseSettings):
    """All of Vigil's configuration. Field ``x`` is env var ``VIGIL_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- server -------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=1, le=65535)
    data_dir: Path = Path("data")
    logs_dir: Path = Path("logs")
    admin_token: SecretStr | None = None
    config_file: Path | None = None
    log_level: str = "INFO"
    log_json: bool = False
    max_message_chars: int = Field(default=16000, ge=1, le=1_000_000)
    chat_queue_limit: int = Field(default=20, ge=1)
    debug_hooks: bool = False
    max_connections: int | None = Field(default=None, ge=1)
    http_keepalive_s: float = Field(default=5.0, gt=0, le=3600)
    http_header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    health_check_interval_s: float = Field(default=5.0, gt=0, le=3600)
    health_write_probe_after_s: float = Field(default=30.0, ge=0)
    health_write_error_hold_s: float = Field(default=60.0, ge=0)
    public_docs: bool = False
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- LLM ----------------------------------------------------------------
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    llm_model: str = "llama3.2"
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(default=60.0, gt=0)
    llm_connect_timeout_s: float = Field(default=5.0, gt=0)
    llm_max_tokens: int = Field(default=1024, ge=1)
    llm_temperature: float = Field(default=0.7, ge=0, le=2)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    # Prices per million tokens (plain numbers, no currency); cost is shown when set.
    llm_price_input_per_1m: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    llm_price_output_per_1m: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    llm_concurrency: int = Field(default=4, ge=1, le=256)
    llm_probe_interval_s: float = Field(default=30.0, gt=0)
    # Named model profiles (docs/models.md): JSON object, or [llm_models.NAME] tables.
    llm_models: Annotated[dict[str, dict[str, Any]] | None, NoDecode] = None
    llm_default: str | None = None
    llm_user_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    llm_fallback: str | None = None
    llm_vision_model: str | None = None
    system_prompt: str = "You are Vigil, a helpful assistant. Answer concisely."

    # --- context ------------------------------------------------------------
    context_max_messages: int = Field(default=100, ge=2)
    context_max_tokens: int = Field(default=6000, ge=64)
    context_summary_max_tokens: int = Field(default=800, ge=16)
    context_cache_chats: int = Field(default=1000, ge=1)
    context_max_images: int = Field(default=2, ge=0, le=20)

    # --- media: images and voice notes ------------------------------------------
    max_image_bytes: int = Field(default=10 * 1_048_576, ge=1024, le=100 * 1_048_576)
    image_max_side_px: int = Field(default=1568, ge=64, le=8192)
    max_images_per_message: int = Field(default=4, ge=1, le=16)
    stt_base_url: str | None = None
    stt_model: str = "whisper-1"
    stt_api_key: SecretStr | None = None
    stt_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_voice_s: float = Field(default=300.0, gt=0, le=7200)
    max_audio_bytes: int = Field(default=25 * 1_048_576, ge=1024, le=200 * 1_048_576)

    # --- Telegram -----------------------------------------------------------
    telegram_api_id: int | None = None
    telegram_api_hash: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_admin_id: int | None = None
    telegram_allowed_users: Annotated[list[str], NoDecode] = Field(default_factory=list)
    telegram_edit_interval_private_s: float = Field(default=1.5, gt=0)
    telegram_edit_interval_group_s: float = Field(default=3.0, gt=0)
    telegram_global_edits_per_s: float = Field(default=20.0, gt=0)
    telegram_paste_debounce_s: float = Field(default=0.8, ge=0)
    telegram_probe_interval_s: float = Field(default=60.0, gt=0)
    telegram_call_timeout_s: float = Field(default=30.0, gt=0)
    telegram_probe_timeout_s: float = Field(default=4.0, gt=0)
    telegram_catch_up_max_age_s: float = Field(default=3600.0, gt=0)
    telegram_server: str | None = None
    telegram_server_key: Path | None = None
    telegram_test_mode: bool = False

    # --- governor (monitoring/) ----------------------------------------------
    governor_enabled: bool = True
    governor_sample_interval_s: float = Field(default=5.0, gt=0)
    governor_health_check_interval_s: float = Field(default=30.0, gt=0)
    governor_optimize_interval_s: float = Field(default=60.0, gt=0)
    governor_cleanup_interval_s: float = Field(default=300.0, gt=0)
    governor_sustain_s: float = Field(default=60.0, ge=0)
    governor_clear_hold_s: float = Field(default=120.0, ge=0)
    governor_history_s: float = Field(default=3600.0, gt=0)
    governor_memory_limit_mb: float | None = Field(default=None, gt=0)
    governor_cleanup_mb: float = Field(default=600.0, gt=0)
    governor_high_mb: float = Field(default=800.0, gt=0)
    governor_restart_mb: float = Field(default=900.0, gt=0)
    governor_hard_restart_mb: float = Field(default=1000.0, gt=0)
    governor_throttle_cpu_percent: float = Field(default=85.0, gt=0, le=100)
    governor_cpu_ceiling_percent: float = Field(default=80.0, gt=0, le=100)
    governor_max_sessions: int = Field(default=100, ge=1)
    governor_session_idle_s: float = Field(default=86400.0, gt=0)
    governor_cleanup_cooldown_s: float = Field(default=120.0, ge=0)
    alert_webhook_url: str | None = None

    # --- supervisor / restarts ---------------------------------------------
    restart_grace_s: float = Field(default=300.0, ge=0)
    restart_schedule: str | None = None
    restart_schedule_max_postpone_s: float = Field(default=3600.0, ge=0)
    supervisor_backoff_initial_s: float = Field(default=1.0, gt=0)
    supervisor_backoff_max_s: float = Field(default=60.0, gt=0)
    supervisor_backoff_reset_s: float = Field(default=600.0, gt=0)
    supervisor_flap_max: int = Field(default=5, ge=1)
    supervisor_flap_window_s: float = Field(default=300.0, gt=0)
    supervisor_watchdog_timeout_s: float = Field(default=30.0, gt=0)
    supervisor_stop_timeout_s: float = Field(default=10.0, gt=0)
    supervisor_retry_failed_s: float = Field(default=300.0, gt=0)

    # --- tasks / backups ----------------------------------------------------
    huey_redis_url: str | None = None
    # Where snapshots go (another disk, ideally); default DATA_DIR/backups.
    backup_dir: Path | None = None
    backup_keep_hourly: int = Field(default=24, ge=0)
    backup_keep_daily: int = Field(default=7, ge=0)
    backup_keep_weekly: int = Field(default=4, ge=0)
    backup_keep_monthly: int = Field(default=12, ge=0)
    message_retention_days: int | None = Field(default=None, ge=1)
    task_retention_days: int = Field(default=7, ge=1)
    # Raw usage rows are kept this long, then only their daily roll-up (core/usage.py).
    # At least 32: a monthly budget sums the raw rows of the month so far.
    usage_retention_days: int = Field(default=400, ge=32, le=36500)
    # Per-task cron overrides (UTC), e.g. {"backup": "0 */6 * * *", "vacuum": "off"}.
    task_schedule: dict[str, str] = Field(default_factory=dict)

    # --- metrics and access log (core/metering.py) ----------------------------
    access_log: bool = False
    metrics_flush_interval_s: float = Field(default=5.0, gt=0, le=300)

    # --- per-user limits: budgets, rate limit, idle reset (core/budgets.py) -----
    budget_user_tokens_day: int = Field(default=0, ge=0, le=MAX_TOKENS_SETTING)
    budget_user_tokens_month: int = Field(default=0, ge=0, le=MAX_TOKENS_SETTING)
    budget_total_tokens_day: int = Field(default=0, ge=0, le=MAX_TOKENS_SETTING)
    # IANA zone name for budget periods (days, months); None: the system's zone.
    timezone: str | None = None
    rate_limit_user_per_min: int = Field(default=20, ge=0, le=100_000)
    context_idle_reset_min: float = Field(default=0.0, ge=0, le=525_600)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get(ENV_PREFIX + "CONFIG_FILE")
        init = init_settings()
        if init.get("config_file"):
            path = str(init["config_file"])
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _ConfigFileSource(settings_cls, path),
        )

    # --- validation -------------------------------------------------------------
    @field_validator("telegram_allowed_users", mode="before")
    @classmethod
    def _split_users(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("llm_user_models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("llm_default", "llm_fallback", "llm_vision_model")
    @classmethod
    def _blank_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("llm_models", mode="before")
    @classmethod
    def _check_models(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(
                    'must be a JSON object such as {"main": {"base_url": '
                    '"http://127.0.0.1:11434/v1", "model": "llama3.2"}}'
                ) from None
        return check_profiles(value)

    @field_validator("llm_base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:11434/v1")
        return value.rstrip("/")

    @field_validator("stt_base_url")
    @classmethod
    def _check_stt_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8080/v1")
        return value.rstrip("/")

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL")
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if not parts.hostname:
            raise ValueError("must name a host, e.g. https://hooks.example.com/vigil")
        return value

    @field_validator("huey_redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ValueError("must be a redis:// or rediss:// URL such as redis://127.0.0.1:6379/0")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("restart_schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        if value and not _SCHEDULE_RE.match(value):
            raise ValueError("must be a daily time HH:MM such as 04:00")
        return value or None

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            zoneinfo.ZoneInfo(value.strip())
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "not a known time zone; use an IANA name such as Europe/Berlin or UTC"
            ) from None
        return value.strip()

    @field_validator("telegram_server")
    @classmethod
    def _check_server(cls, value: str | None) -> str | None:
        if not value:
            return None
        match = _SERVER_RE.match(value.strip())
        if not match or not 0 < int(match.group(3)) < 65536:
            raise ValueError("must be DC_ID@HOST:PORT such as 2@149.154.167.40:443")
        return value.strip()

    @model_validator(mode="after")
    def _check_thresholds(self) -> Settings:
        ladder = [
            ("governor_cleanup_mb", self.governor_cleanup_mb),
            ("governor_high_mb", self.governor_high_mb),
            ("governor_restart_mb", self.governor_restart_mb),
            ("governor_hard_restart_mb", self.governor_hard_restart_mb),
        ]
        for (low_name, low), (high_name, high) in itertools.pairwise(ladder):
            if low > high:
                raise ValueError(
                    f"VIGIL_{low_name.upper()} ({low:g}) must not exceed "
                    f"VIGIL_{high_name.upper()} ({high:g})"
                )
        if self.supervisor_backoff_initial_s > self.supervisor_backoff_max_s:
            raise ValueError(
                "VIGIL_SUPERVISOR_BACKOFF_INITIAL_S must not exceed VIGIL_SUPERVISOR_BACKOFF_MAX_S"
            )
        self._check_secret_placeholders()
        self._check_model_names()
        return self

    def _check_model_names(self) -> None:
        """VIGIL_LLM_DEFAULT / _FALLBACK / _USER_MODELS must name profiles."""
        names = list(self.model_profiles)
        known = ", ".join(names)
        named = (
            ("llm_default", self.llm_default),
            ("llm_fallback", self.llm_fallback),
            ("llm_vision_model", self.llm_vision_model),
        )
        for setting, value in named:
            if value is not None and value not in names:
                raise ValueError(
                    f"{ENV_PREFIX}{setting.upper()}: no model profile named {value!r} "
                    f"(profiles: {known})"
                )
        for value in self.llm_user_models:
            if value not in names:
                raise ValueError(
                    f"{ENV_PREFIX}LLM_USER_MODELS: no model profile named {value!r} "
                    f"(profiles: {known})"
                )

    @property
    def model_profiles(self) -> dict[str, ModelProfile]:
        """Every model profile by name; without VIGIL_LLM_MODELS, one named after the model."""
        if not self.llm_models:
            return {
                self.llm_model: ModelProfile(
                    self.llm_model,
                    self.llm_base_url,
                    self.llm_model,
                    self.llm_api_key,
                    self.llm_max_tokens,
                    None,
                    False,
                )
            }
        return {
            name: ModelProfile(
                name,
                spec["base_url"],
                spec["model"],
                SecretStr(spec["api_key"]) if spec.get("api_key") else None,
                spec.get("max_tokens") or self.llm_max_tokens,
                spec.get("context_tokens"),
                bool(spec.get("vision", False)),
            )
            for name, spec in self.llm_models.items()
        }

    @property
    def default_model(self) -> str:
        """The profile a chat uses until ``/model`` picks another."""
        return self.llm_default or next(iter(self.model_profiles))

    @property
    def user_models(self) -> list[str]:
        """The profiles chatters may pick with ``/model`` (default: all)."""
        return list(self.llm_user_models) or list(self.model_profiles)

    def _check_secret_placeholders(self) -> None:
        """A settings file restored from a backup without secrets must be filled in first."""
        for name in (*SECRET_FIELDS, *SECRET_URL_FIELDS):
            value = getattr(self, name)
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value or "")
            if SECRET_PLACEHOLDER in text:
                raise ValueError(
                    f"{ENV_PREFIX}{name.upper()} still holds the placeholder of a backup taken "
                    "without secrets: put the real value in"
                )

    # --- derived paths --------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.data_dir / "system.db"

    @property
    def media_dir(self) -> Path:
        """Images sent with messages (one file each, 0600)."""
        return self.data_dir / "media"

    @property
    def tasks_db_path(self) -> Path:
        return self.data_dir / "tasks.db"

    @property
    def session_path(self) -> Path:
        return self.data_dir / "telegram.session"

    @property
    def backups_dir(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "vigil.pid"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin_token"

    @property
    def base_url(self) -> str:
        """Where this machine reaches the server (IPv6 hosts in brackets)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def is_loopback_bind(self) -> bool:
        """True when only this machine can reach the server (127.0.0.0/8, ::1, localhost)."""
        host = self.host.strip("[]").lower()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name: whatever it resolves to, treat it as public

    @property
    def trusted_hosts(self) -> list[str]:
        """Host header values the server answers (``VIGIL_ALLOWED_HOSTS``).

        The host of ``base_url`` (what the supervisor's watchdog and the CLI
        use) is always included: refusing it would get the server killed.
        """
        local = urllib.parse.urlsplit(self.base_url).hostname or "127.0.0.1"
        listed = self.allowed_hosts or [self.host.strip("[]"), "localhost", "127.0.0.1", "::1"]
        return list(dict.fromkeys([*listed, local]))

    def public_bind_problem(self) -> str | None:
        """One line when the server would be reachable from the network with no chosen token."""
        if self.is_loopback_bind:
            return None
        if self.admin_token is not None and self.admin_token.get_secret_value().strip():
            return None
        return (
            f"VIGIL_HOST={self.host} is reachable from the network: set VIGIL_ADMIN_TOKEN "
            "to a long random secret first (e.g. openssl rand -hex 24), or bind 127.0.0.1"
        )

    @property
    def telegram_configured(self) -> bool:
        return bool(self.telegram_api_id and self.telegram_api_hash)

    def secrets(self) -> list[str]:
        """Secret values that must never reach a log line."""
        values = [
            self.admin_token,
            self.llm_api_key,
            self.telegram_api_hash,
            self.telegram_bot_token,
            self.stt_api_key,
        ]
        found = [v.get_secret_value() for v in values if v and v.get_secret_value()]
        urls = (self.huey_redis_url, self.llm_base_url, self.alert_webhook_url, self.stt_base_url)
        for url in urls:
            password = _url_password(url)
            if password:
                found.append(password)
        for profile in self.model_profiles.values():
            if profile.api_key is not None and profile.api_key.get_secret_value():
                found.append(profile.api_key.get_secret_value())
            password = _url_password(profile.base_url)
            if password:
                found.append(password)
        return list(dict.fromkeys(found))


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """One named model: where it is, what it is called there, what it can do."""

    name: str
    base_url: str
    model: str
    api_key: SecretStr | None = field(default=None, repr=False)
    max_tokens: int = 1024
    context_tokens: int | None = None
    vision: bool = False


_PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_PROFILE_KEYS = ("base_url", "model", "api_key", "max_tokens", "context_tokens", "vision")


def check_profiles(value: Any) -> dict[str, dict[str, Any]]:
    """VIGIL_LLM_MODELS, checked; raises ValueError with one line (never the API key)."""
    if not isinstance(value, dict) or not value:
        raise ValueError("must be a non-empty JSON object (table) of name -> profile")
    checked: dict[str, dict[str, Any]] = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not _PROFILE_NAME_RE.match(name):
            raise ValueError(
                f"profile name {str(name)[:64]!r} must be 1-64 letters, digits, . _ : - "
                "(starting with a letter or digit)"
            )
        if not isinstance(spec, dict):
            raise ValueError(f"profile {name!r} must be an object with base_url and model")
        unknown = sorted(set(spec) - set(_PROFILE_KEYS))
        if unknown:
            raise ValueError(
                f"profile {name!r}: unknown key(s) {', '.join(map(str, unknown))} "
                f"(known: {', '.join(_PROFILE_KEYS)})"
            )
        base_url = spec.get("base_url")
        if not isinstance(base_url, str) or not re.match(r"^https?://[^\s/]+", base_url):
            raise ValueError(
                f"profile {name!r}: base_url must be an http(s) URL such as "
                "http://127.0.0.1:11434/v1"
            )
        model = spec.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"profile {name!r}: model must be the model's name, e.g. llama3.2")
        key = spec.get("api_key")
        if key is not None and not isinstance(key, str):
            raise ValueError(f"profile {name!r}: api_key must be a string")
        if SECRET_PLACEHOLDER in base_url:
            raise ValueError(
                f"profile {name!r}: base_url still holds the placeholder of a backup taken "
                "without secrets: put the real password in"
            )
        if key is not None and SECRET_PLACEHOLDER in key:
            raise ValueError(
                f"profile {name!r}: api_key still holds the placeholder of a backup taken "
                "without secrets: put the real value in"
            )
        for number, low in (("max_tokens", 1), ("context_tokens", 64)):
            n = spec.get(number)
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < low):
                raise ValueError(f"profile {name!r}: {number} must be a whole number >= {low}")
        vision = spec.get("vision", False)
        if not isinstance(vision, bool):
            raise ValueError(f"profile {name!r}: vision must be true or false")
        checked[name] = {**spec, "base_url": base_url.rstrip("/"), "model": model.strip()}
    return checked


def _url_password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urllib.parse.urlsplit(url).password
    except ValueError:
        return None


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if not loc:
        return message
    name = ENV_PREFIX + loc[0].upper()
    value = error.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    if any(word in loc[0] for word in ("token", "key", "hash", "llm_models")):
        shown = ""
    return f"{name}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings for an entry point; raises ConfigError with one line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(_describe(dict(first)) + suffix) from None
    except ConfigError:
        raise
    except ValueError as exc:  # e.g. a malformed .env or complex env value
        raise ConfigError(f"configuration error: {exc}") from None
