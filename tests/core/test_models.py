"""Model profiles: settings, ``/model``, the fallback and its return to the primary.

Two real fake model servers (real HTTP/SSE); the primary fails on demand.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.api import LocalReply
from core.channel import IncomingMessage
from core.cli.config_view import effective_config
from core.config import ConfigError, Settings, load_settings
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM

SECRET = "sk-profile-secret-4d2c"


class TelegramLike(LocalReply):
    """A channel named like the Telegram adapter: its users are chatters."""

    name = "telegram"


@pytest.fixture
def pair() -> Iterator[tuple[FakeLLM, FakeLLM]]:
    with FakeLLM() as main, FakeLLM() as backup:
        main.reply = lambda messages: "from main"
        backup.reply = lambda messages: "from backup"
        yield main, backup


def profiles(main: FakeLLM, backup: FakeLLM) -> str:
    return json.dumps(
        {
            "main": {"base_url": main.url, "model": "m-main"},
            "backup": {"base_url": backup.url, "model": "m-backup", "api_key": SECRET},
        }
    )


def pair_settings(tmp_path: Path, main: FakeLLM, backup: FakeLLM, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "llm_models": profiles(main, backup),
        "llm_fallback": "backup",
        "llm_max_retries": 0,
    }
    values.update(extra)
    return make_settings(tmp_path, **values)


class Clock:
    """The models' monotonic clock, moved by hand (the hold, the re-probe gap)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runtime_factory(runtime_factory: Callable[..., Any], clock: Clock) -> Callable[..., Any]:
    """Runtimes whose models run on the test's clock."""
    return functools.partial(runtime_factory, clock=clock)


def say(chat_id: str, text: str, user: str = "5") -> IncomingMessage:
    return IncomingMessage(chat_id, text, user_id=user)


# --- settings ---------------------------------------------------------------------


def test_without_profiles_the_old_settings_are_one_profile(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm_model="llama3.2", llm_api_key=SECRET)
    assert list(settings.model_profiles) == ["llama3.2"]
    profile = settings.model_profiles["llama3.2"]
    assert profile.base_url == settings.llm_base_url and profile.api_key is not None
    assert settings.default_model == "llama3.2" and settings.user_models == ["llama3.2"]


def test_profiles_from_env_and_from_a_toml_table(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    main, backup = pair
    monkeypatch.setenv("VIGIL_LLM_MODELS", profiles(main, backup))
    monkeypatch.setenv("VIGIL_LLM_DEFAULT", "backup")
    monkeypatch.setenv("VIGIL_LLM_USER_MODELS", "main")
    settings = load_settings(data_dir=tmp_path)
    assert list(settings.model_profiles) == ["main", "backup"]
    assert settings.default_model == "backup" and settings.user_models == ["main"]
    assert SECRET in settings.secrets()  # masked in every log line
    for name in ("VIGIL_LLM_MODELS", "VIGIL_LLM_DEFAULT", "VIGIL_LLM_USER_MODELS"):
        monkeypatch.delenv(name)
    toml = tmp_path / "vigil.toml"
    toml.write_text(
        f'[llm_models.local]\nbase_url = "{main.url}"\nmodel = "llama3.2"\n'
        f'[llm_models.vision]\nbase_url = "{backup.url}"\nmodel = "llava"\nvision = true\n'
        f'api_key = "{SECRET}"\nmax_tokens = 300\n'
    )
    monkeypatch.setenv("VIGIL_CONFIG_FILE", str(toml))
    settings = load_settings(data_dir=tmp_path)
    vision = settings.model_profiles["vision"]
    assert vision.vision and vision.max_tokens == 300 and settings.default_model == "local"
    shown = json.dumps(effective_config(settings))
    assert SECRET not in shown and '"api_key": "***"' in shown


def one(fields: str) -> str:
    """VIGIL_LLM_MODELS with one profile ``a`` holding ``fields`` (JSON members)."""
    return '{"a": {' + fields + "}}"


BASE = '"base_url": "http://127.0.0.1:1/v1"'
KEY = f'"api_key": "{SECRET}"'


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"llm_models": "{not json"}, "VIGIL_LLM_MODELS: must be a JSON object"),
        ({"llm_models": "[]"}, "VIGIL_LLM_MODELS: must be a non-empty JSON object"),
        ({"llm_models": "{}"}, "VIGIL_LLM_MODELS: must be a non-empty JSON object"),
        ({"llm_models": '{"a": 1}'}, "profile 'a' must be an object"),
        ({"llm_models": one(f'{BASE}, "model": "m"').replace('"a"', '"a b"')}, "name 'a b'"),
        ({"llm_models": one(f'"base_url": "ftp://x", "model": "m", {KEY}')}, "base_url must"),
        ({"llm_models": one(f'"model": "m", {KEY}')}, "base_url must be"),
        ({"llm_models": one(f"{BASE}, {KEY}")}, "model must be"),
        ({"llm_models": one(f'{BASE}, "model": "m", "vison": true')}, "unknown key(s) vison"),
        ({"llm_models": one(f'{BASE}, "model": "m", "max_tokens": 0')}, "max_tokens must"),
        ({"llm_models": one(f'{BASE}, "model": "m", "context_tokens": 9')}, "context_tokens"),
        ({"llm_models": one(f'{BASE}, "model": "m", "vision": "yes"')}, "vision must"),
        ({"llm_models": one(f'{BASE}, "model": "m", "api_key": 5')}, "api_key must"),
        ({"llm_default": "nope"}, "VIGIL_LLM_DEFAULT: no model profile named 'nope'"),
        ({"llm_fallback": "nope"}, "VIGIL_LLM_FALLBACK: no model profile named 'nope'"),
        ({"llm_user_models": "fake,nope"}, "VIGIL_LLM_USER_MODELS: no model profile named"),
    ],
)
def test_every_bad_value_is_one_line(tmp_path: Path, values: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(data_dir=tmp_path, llm_model="fake", **values)
    message = str(info.value)
    assert expected in message and "\n" not in message and SECRET not in message


def test_backups_without_secrets_drop_the_profiles_api_keys(tmp_path: Path) -> None:
    from core.backups.extras import redact_config, redact_env

    spec = {"a": {"base_url": "http://u:pw-9@h/v1", "model": "m", "api_key": SECRET}}
    env = redact_env(f"VIGIL_LLM_MODELS='{json.dumps(spec)}'\nVIGIL_PORT=9000\n")
    as_json = redact_config(json.dumps({"llm_models": spec}), ".json")
    toml = redact_config(
        f'port = 9000\n[llm_models.a]\nbase_url = "http://u:pw-9@h/v1"\napi_key = "{SECRET}"\n'
        'model = "api_key"\n',
        ".toml",
    )
    for text in (env, as_json, toml):
        assert SECRET not in text and "pw-9" not in text, text
        assert "VIGIL-SECRET-NOT-IN-BACKUP" in text
    assert 'model = "api_key"' in toml and "VIGIL_PORT=9000" in env
    (tmp_path / "restored.toml").write_text(toml)
    with pytest.raises(ConfigError, match="placeholder"):  # restored: fill the key in first
        load_settings(config_file=tmp_path / "restored.toml", data_dir=tmp_path)


# --- /model -------------------------------------------------------------------------


async def test_model_shows_switches_refuses_and_survives_a_restart(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Callable[..., Any]
) -> None:
    main, backup = pair
    settings = pair_settings(tmp_path, main, backup, llm_user_models="main,backup")
    chat = (await runtime_factory(settings)).chat
    channel = TelegramLike()
    await chat.handle(say("tg:5", "/model"), channel)
    assert "This chat uses main (m-main)" in channel.messages[-1]
    assert "Choices: main, backup" in channel.messages[-1]
    await chat.handle(say("tg:5", "/model gpt-9"), channel)
    assert channel.messages[-1].startswith("There is no model called “gpt-9”")
    result = await chat.handle(say("tg:5", "/model BACKUP"), channel)
    assert result.reply == "This chat now uses backup (m-backup)."
    answered = await chat.handle(say("tg:5", "hello"), channel)
    assert answered.reply == "from backup" and answered.model == "backup"
    assert main.requests == [] and backup.requests[-1]["model"] == "m-backup"
    other = await chat.handle(say("tg:6", "hello", user="6"), channel)
    assert other.model == "main"  # per chat
    await chat.memory.db.close()

    again = (await runtime_factory(settings)).chat  # a restart: a new process's parts
    after = await again.handle(say("tg:5", "still there?"), channel)
    assert after.model == "backup" and after.reply == "from backup"


async def test_a_chatter_may_pick_only_the_user_models(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Callable[..., Any]
) -> None:
    main, backup = pair
    settings = pair_settings(tmp_path, main, backup, llm_user_models="main")
    chat = (await runtime_factory(settings)).chat
    chatter = TelegramLike()
    await chat.handle(say("tg:5", "/model backup"), chatter)
    assert (
        chatter.messages[-1] == "There is no model called “backup” to choose here. Choices: main."
    )
    operator = LocalReply()  # the local API's user is the operator: any profile
    result = await chat.handle(IncomingMessage("ops", "/model backup"), operator)
    assert result.reply == "This chat now uses backup (m-backup)."


# --- fallback ---------------------------------------------------------------------------


async def test_fallback_under_a_dead_primary_and_return_to_it(
    tmp_path: Path,
    pair: tuple[FakeLLM, FakeLLM],
    runtime_factory: Callable[..., Any],
    clock: Clock,
) -> None:
    main, backup = pair
    main.fail_status, main.fail_times, main.models_status = 503, -1, 503
    runtime = await runtime_factory(pair_settings(tmp_path, main, backup))
    chat, models = runtime.chat, runtime.models
    channel = TelegramLike()

    first = await chat.handle(say("tg:5", "hello"), channel)
    assert first.model == "backup" and first.reply.startswith("from backup\n\n")
    assert "answered by backup: main is not available" in first.reply
    assert channel.messages[-1] == first.reply  # the chatter sees the footer
    stored = await chat.memory.last_turn("tg:5", "assistant")
    assert stored is not None and stored.content == "from backup"  # not in the context
    assert any(row for row in chat.usage.unwritten() if "backup" in row)
    tried = len(main.requests)
    assert tried == 1

    second = await chat.handle(say("tg:5", "again"), channel)
    assert second.model == "backup" and len(main.requests) == tried  # known down: skipped
    await models.wait_probes()
    assert models.clients["main"].status.state != "ok"

    main.fail_times, main.models_status = 0, 200  # the primary is back
    clock.advance(models.reprobe_gap_s)
    await chat.handle(say("tg:5", "third"), channel)  # skipped once more, re-probed
    await models.wait_probes()
    assert models.clients["main"].status.state == "ok"
    back = await chat.handle(say("tg:5", "fourth"), channel)
    assert back.model == "main" and back.reply == "from main"
    health = models.states()
    assert health["main"]["status"] == "ok" and health["backup"]["fallback"] is True


async def test_a_stopped_primary_falls_back_at_once(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Callable[..., Any]
) -> None:
    main, backup = pair
    runtime = await runtime_factory(pair_settings(tmp_path, main, backup))
    main.stop()
    result = await runtime.chat.handle(say("tg:5", "hello"), TelegramLike())
    assert result.model == "backup" and result.error_code is None
    assert runtime.models.clients["main"].status.state == "unreachable"


async def test_a_refused_request_is_not_failed_over(
    tmp_path: Path, pair: tuple[FakeLLM, FakeLLM], runtime_factory: Callable[..., Any]
) -> None:
    main, backup = pair
    main.fail_status, main.fail_times = 401, -1  # a wrong key: the operator must fix it
    runtime = await runtime_factory(pair_settings(tmp_path, main, backup))
    result = await runtime.chat.handle(say("tg:5", "hello"), TelegramLike())
    assert result.error_code == "llm_unavailable" and backup.requests == []


@pytest.mark.slow
def test_local_api_and_health_name_the_profile(
    tmp_path: Path,
    pair: tuple[FakeLLM, FakeLLM],
    live_server_factory: Callable[..., LiveServer],
) -> None:
    main, backup = pair
    main.fail_status, main.fail_times = 500, -1
    server = live_server_factory(pair_settings(tmp_path, main, backup))
    reply = server.chat("demo", "hello")
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "backup"
    llm = server.client.get("/health").json()["checks"]["llm"]
    assert set(llm["profiles"]) == {"main", "backup"}
    assert llm["profiles"]["main"]["status"] in ("unreachable", "error")
    assert llm["profiles"]["backup"]["status"] == "ok" and llm["profile"] == "main"
    assert SECRET not in json.dumps(llm)
