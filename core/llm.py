"""LLM client for any OpenAI-compatible ``/chat/completions`` endpoint.

The only module that speaks HTTP to the model. It streams with SSE, retries
connection errors, 429 and 5xx *before the first token* with backoff (honouring
Retry-After), and turns every httpx/JSON failure into ``LLMUnavailable``,
``LLMTimeout`` or ``LLMBadResponse``. Their messages are Vigil's own words
(for the operator: URL, HTTP status, the setting to fix); the model server's
error body never goes into one, since a server may echo the request's
``Authorization`` header. The body is logged, with the API key masked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from core.errors import LLMBadResponse, LLMError, LLMTimeout, LLMUnavailable

if TYPE_CHECKING:
    from core.config import Settings
    from core.usage import CallMeter

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 500, 502, 503, 504}
FIX_HINT = (
    "Set VIGIL_LLM_BASE_URL to an OpenAI-compatible endpoint (for example a local Ollama at "
    "http://127.0.0.1:11434/v1) and VIGIL_LLM_MODEL to a model it serves."
)


@dataclass(slots=True)
class LLMStatus:
    state: str = "unknown"  # unknown | ok | unreachable | error
    detail: str = ""  # Vigil's own words, never the model server's
    checked_at: float = 0.0
    latency_ms: float | None = None
    code: str = ""  # a stable error code (llm_unavailable, llm_timeout, ...) when failing


class LLMClient:
    """Streams chat completions; one instance per process, closed by the lifespan."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_tokens: int = 1024,
        temperature: float = 0.7,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The profile's name (VIGIL_LLM_MODELS); usage rows record it.
        self.name = name or model
        self.base_url = base_url.rstrip("/")
        # What logs, /health and chatters see: never the URL's user:password.
        self.display_url = display_url(self.base_url)
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        headers = {"Accept": "text/event-stream"}
        self._secret = ""
        if api_key is not None and api_key.get_secret_value():
            self._secret = api_key.get_secret_value()
            headers["Authorization"] = f"Bearer {self._secret}"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers=headers,
            transport=transport,
        )
        self.status = LLMStatus()
        # Ask for the model's own token counts until the server says it knows no
        # such option (then usage is estimated, and marked so).
        self.usage_option = True
        self.requests = 0
        self.failures = 0
        self.retries = 0
        # Real calls (not probes) that failed in a row with an outage (unreachable,
        # timeout, 429/5xx), and when the last did: a probe's "ok" alone does not
        # make such a model trusted again at once (core/models.py).
        self.outages = 0
        self.outage_at = 0.0
        self.clock = clock  # monotonic seconds of ``outage_at``
        # Set when another model answers if this one fails (a fallback exists):
        # a call right after failed ones is a trial and is not retried.
        self.fail_fast = False

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- streaming ---------------------------------------------------------
    async def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        meter: CallMeter | None = None,
    ) -> AsyncIterator[str]:
        """Yield text deltas of the model's answer; raises LLMError subclasses.

        ``meter`` (optional) gets the model's own token counts, when its server
        sends a ``usage`` chunk, and the time of the first token.
        """
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": self.temperature,
        }
        if self.usage_option:
            payload["stream_options"] = {"include_usage": True}
        if meter is not None:
            meter.model = self.name
        url = f"{self.base_url}/chat/completions"
        self.requests += 1
        try:
            async for delta in self._attempts(url, payload, meter):
                yield delta
        except LLMError as exc:
            if is_outage(exc):
                self.outages += 1
                self.outage_at = self.clock()
            raise
        self.outages = 0

    async def _attempts(
        self, url: str, payload: dict[str, Any], meter: CallMeter | None
    ) -> AsyncIterator[str]:
        """The request with its retries; marks the status (see :meth:`stream`)."""
        attempt = 0
        retries = 0 if self.fail_fast and self.outages > 0 else self.max_retries
        started = time.monotonic()
        while True:
            try:
                async with self._client.stream("POST", url, json=payload) as response:
                    if response.status_code in RETRY_STATUSES and attempt < retries:
                        await response.aread()
                        attempt += 1
                        await self._backoff(attempt, response)
                        continue
                    if response.status_code >= 400:
                        body = (await response.aread()).decode("utf-8", "replace")
                        if self._refuses_usage_option(response.status_code, body, payload):
                            continue  # the same request without it, at once
                        raise self._http_error(response.status_code, body)
                    async for delta in self._deltas(response, meter):
                        if meter is not None and meter.first_token is None:
                            meter.first_token = time.monotonic()
                        yield delta
                self._mark("ok", "", started)
                return
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt < retries:
                    attempt += 1
                    await self._backoff(attempt, None)
                    continue
                error: LLMError = LLMUnavailable(
                    f"The language model is not reachable at {self.display_url} "
                    f"({_reason(exc)}). {FIX_HINT}",
                    url=self.display_url,
                )
                self._fail("unreachable", _reason(exc), error.code)
                raise error from exc
            except httpx.TimeoutException as exc:
                self._fail("error", "timeout", LLMTimeout.code)
                raise LLMTimeout(
                    f"The language model at {self.display_url} stopped answering for "
                    f"{self.timeout_s:g} s. Try again, or raise VIGIL_LLM_TIMEOUT_S.",
                    url=self.display_url,
                ) from exc
            except httpx.HTTPError as exc:
                reason = _reason(exc)
                self._fail("error", reason, LLMUnavailable.code)
                raise LLMUnavailable(
                    f"The connection to the language model at {self.display_url} failed "
                    f"({reason}). Try again in a moment.",
                    url=self.display_url,
                ) from exc
            except LLMError as exc:
                self._fail(
                    "unreachable" if isinstance(exc, LLMUnavailable) else "error",
                    exc.message,
                    exc.code,
                )
                raise

    def _refuses_usage_option(self, status: int, body: str, payload: dict[str, Any]) -> bool:
        """A server that rejects ``stream_options``: drop it for good (usage estimated)."""
        if status not in (400, 422) or "stream_options" not in payload:
            return False
        if "stream_options" not in body and "include_usage" not in body:
            return False
        payload.pop("stream_options")
        self.usage_option = False
        log.warning(
            "the model server at %s does not accept stream_options: token counts are "
            "estimated from now on (usage rows marked estimated)",
            self.display_url,
        )
        return True

    async def _deltas(
        self, response: httpx.Response, meter: CallMeter | None
    ) -> AsyncIterator[str]:
        """Text deltas, never ending inside a surrogate pair (see ``_whole``)."""
        held = ""
        async for delta in self._raw_deltas(response, meter):
            text, held = _whole(held + delta)
            if text:
                yield text
        if held:
            yield "\ufffd"

    async def _raw_deltas(
        self, response: httpx.Response, meter: CallMeter | None
    ) -> AsyncIterator[str]:
        ctype = response.headers.get("content-type", "")
        if "application/json" in ctype:  # a server that ignored stream=true
            body = _loads((await response.aread()).decode("utf-8", "replace"))
            _take_usage(body, meter)
            yield _content_of(body, streaming=False)
            return
        got_any = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = _loads(data)
            if isinstance(chunk, dict) and "error" in chunk:
                self._log_upstream("an error in the stream", _error_text(chunk["error"]))
                raise LLMBadResponse(
                    f"The language model at {self.display_url} reported an error in the middle "
                    "of its answer (the model server's text is in logs/system.log).",
                    url=self.display_url,
                )
            _take_usage(chunk, meter)
            delta = _content_of(chunk, streaming=True)
            if delta:
                got_any = True
                yield delta
        if not got_any:
            raise LLMBadResponse(
                f"The language model at {self.display_url} sent an empty answer. "
                f"Check that VIGIL_LLM_MODEL ({self.model}) is a chat model.",
                url=self.display_url,
            )

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        meter: CallMeter | None = None,
    ) -> str:
        """The whole answer as one string (summaries, probes)."""
        stream = self.stream(messages, max_tokens=max_tokens, meter=meter)
        parts = [delta async for delta in stream]
        return "".join(parts)

    async def summarize(self, request: str, *, meter: CallMeter | None = None) -> str:
        return await self.complete(
            [{"role": "user", "content": request}], max_tokens=400, meter=meter
        )

    # --- health -------------------------------------------------------------------
    async def probe(self, *, timeout_s: float = 3.0) -> LLMStatus:
        """Cheap reachability check: ``GET {base_url}/models`` (at most ``timeout_s``,
        nor longer than a turn would wait: a hung server is not waited on for long)."""
        started = time.monotonic()
        timeout_s = min(timeout_s, self.timeout_s)
        try:
            response = await self._client.get(f"{self.base_url}/models", timeout=timeout_s)
        except httpx.HTTPError as exc:
            self._fail("unreachable", _reason(exc), LLMUnavailable.code)
            return self.status
        if response.status_code in (401, 403):
            self._fail(
                "error", "the API key was rejected; set VIGIL_LLM_API_KEY", LLMUnavailable.code
            )
        elif response.status_code >= 500:
            self._fail("error", f"HTTP {response.status_code}", LLMUnavailable.code)
        else:  # 2xx, or a 404 from servers without /models: reachable either way
            self._mark("ok", "", started)
        return self.status

    def _mark(self, state: str, detail: str, started: float) -> None:
        self.status = LLMStatus(
            state, detail, time.time(), round((time.monotonic() - started) * 1000, 1)
        )

    def _fail(self, state: str, detail: str, code: str = LLMError.code) -> None:
        self.failures += 1
        self.status = LLMStatus(state, detail, time.time(), None, code)

    def _log_upstream(self, what: str, text: str) -> None:
        """The model server's own words: logs only, the API key masked."""
        if self._secret:
            text = text.replace(self._secret, "***")
        log.warning("model server at %s sent %s: %.300s", self.display_url, what, text)

    async def _backoff(self, attempt: int, response: httpx.Response | None) -> None:
        self.retries += 1
        delay = retry_delay(self.backoff_s, attempt, response)
        log.warning("LLM request failed (attempt %d), retrying in %.1f s", attempt, delay)
        await asyncio.sleep(delay)

    def _http_error(self, status: int, body: str) -> LLMError:
        self._log_upstream(f"HTTP {status}", _error_text(_safe_json(body)) or body[:300])
        detail = "its own text is in logs/system.log"
        if status in (401, 403):
            return LLMUnavailable(
                f"The language model at {self.display_url} rejected the API key (HTTP {status}). "
                "Set VIGIL_LLM_API_KEY.",
                url=self.display_url,
                http_status=status,
            )
        if status == 404:
            return LLMUnavailable(
                f"The language model at {self.display_url} does not know model '{self.model}' or "
                f"the URL is wrong (HTTP 404; {detail}). Check VIGIL_LLM_MODEL and that "
                "VIGIL_LLM_BASE_URL ends in /v1.",
                url=self.display_url,
                http_status=status,
            )
        if status in RETRY_STATUSES:
            return LLMUnavailable(
                f"The language model at {self.display_url} is failing (HTTP {status}; {detail}). "
                "Try again in a moment.",
                url=self.display_url,
                http_status=status,
            )
        return LLMBadResponse(
            f"The language model at {self.display_url} refused the request "
            f"(HTTP {status}; {detail}).",
            url=self.display_url,
            http_status=status,
        )


def is_outage(exc: LLMError) -> bool:
    """The model is down, not the request wrong: unreachable, a timeout, or 429/5xx
    after the retries (another model may answer). 401/403/404/400 are not."""
    if isinstance(exc, LLMTimeout):
        return True
    if not isinstance(exc, LLMUnavailable):
        return False
    status = exc.fields.get("http_status")
    return status is None or status in RETRY_STATUSES


def llm_from_settings(settings: Settings, **overrides: Any) -> LLMClient:
    """The default profile's client (VIGIL_LLM_DEFAULT, or the one VIGIL_LLM_* model);
    ``overrides`` for tasks and the CLI."""
    profile = settings.model_profiles[settings.default_model]
    options: dict[str, Any] = {
        "base_url": profile.base_url,
        "model": profile.model,
        "api_key": profile.api_key,
        "name": profile.name,
        "timeout_s": settings.llm_timeout_s,
        "connect_timeout_s": settings.llm_connect_timeout_s,
        "max_tokens": profile.max_tokens,
        "temperature": settings.llm_temperature,
        "max_retries": settings.llm_max_retries,
    }
    options.update(overrides)
    return LLMClient(**options)


def retry_delay(backoff_s: float, attempt: int, response: httpx.Response | None) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling from ``backoff_s``, or
    the server's own ``Retry-After`` (at most 30 s) when it sent one."""
    if response is not None:
        retry_after = response.headers.get("retry-after", "")
        if retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), 30.0)
    return float(backoff_s * (2 ** (attempt - 1)))


def display_url(url: str) -> str:
    """``url`` without ``user:password@`` and query values (``?api_key=...``): safe for
    logs, /health and replies."""
    parts = urllib.parse.urlsplit(url)
    if parts.query:
        names = [name for name, _ in urllib.parse.parse_qsl(parts.query, True)]
        parts = parts._replace(query="&".join(f"{name}=***" for name in names))
    if parts.username is None and parts.password is None:
        return urllib.parse.urlunsplit(parts)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def _whole(text: str) -> tuple[str, str]:
    """Split off a trailing high surrogate (a pair split across two chunks by a
    server) and re-pair/replace the rest, so every delta is valid Unicode."""
    held = ""
    if text and "\ud800" <= text[-1] <= "\udbff":
        text, held = text[:-1], text[-1]
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), held


def _reason(exc: BaseException) -> str:
    chain: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 5:
        chain.append(str(cause).lower())
        cause = cause.__cause__ or cause.__context__
    if any("refused" in t or "errno 111" in t for t in chain):
        return "connection refused"
    if any("name or service not known" in t or "nodename nor servname" in t for t in chain):
        return "unknown host"
    if any("reset by peer" in t or "errno 104" in t for t in chain):
        return "connection reset by the model server"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the model server closed the connection mid-answer"
    return type(exc).__name__


def _loads(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise LLMBadResponse(
            "The language model sent a response Vigil could not read (malformed JSON in the "
            "stream). Check that VIGIL_LLM_BASE_URL points at an OpenAI-compatible API."
        ) from exc


def _safe_json(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict):
            return str(inner.get("message", ""))[:200]
        return str(inner)[:200]
    return "" if error is None else str(error)[:200]


def _take_usage(chunk: Any, meter: CallMeter | None) -> None:
    """The model's own token counts (OpenAI: a last chunk with ``usage``; vLLM may
    send them in every chunk: the last one wins)."""
    if meter is None or not isinstance(chunk, dict):
        return
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    counts = (prompt, completion)
    if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        meter.prompt_tokens, meter.completion_tokens = prompt, completion


def _content_of(chunk: Any, *, streaming: bool) -> str:
    try:
        choice = chunk["choices"][0]
        part = choice["delta"] if streaming else choice["message"]
        content = part.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        usage_only = isinstance(chunk, dict) and ("choices" in chunk or "usage" in chunk)
        if streaming and usage_only and chunk.get("choices", []) == []:
            return ""  # usage-only chunks
        raise LLMBadResponse(
            "The language model sent a response without the OpenAI 'choices' field. Check that "
            "VIGIL_LLM_BASE_URL points at an OpenAI-compatible API."
        ) from exc
    if not isinstance(content, str):
        raise LLMBadResponse("The language model sent non-text content.")
    return content
