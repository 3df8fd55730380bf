"""A small OpenAI-compatible server for tests: real HTTP, real SSE.

Runs in a background thread on a free loopback port. Attributes script its
behaviour, and can be changed while it runs:

- ``reply``: the answer text, or a callable ``(messages) -> str``
  (default: ``"echo: <last user message>"``)
- ``token_delay_s``: pause before each streamed chunk (a slow model)
- ``fail_status`` / ``fail_times``: answer the next ``fail_times`` requests
  with that HTTP status (``fail_times=-1``: always)
- ``stall_after_chunks`` / ``stall_s``: stop sending after N chunks for S s
- ``garbage``: send a malformed SSE line instead of JSON
- ``no_choices``: send JSON chunks without ``choices``
- ``plain_json``: ignore ``stream`` and answer with one JSON body
- ``echo_auth``: failures (``fail_times``) and ``models_status`` errors echo
  the request's ``Authorization`` header in their error body, as some
  servers do (the API key must never travel further)
- ``stream_error``: send an SSE ``error`` chunk (echoing the header too)
- ``reset_after_chunks``: reset the connection (RST) after N chunks
- ``send_usage``: end the stream with an OpenAI ``usage`` chunk (``choices: []``) when the
  request asks for it (``stream_options.include_usage``); False: a server that never
  sends one. The counts are :meth:`FakeLLM.usage_of` (prompt: words of the messages
  plus 3 per message; completion: the number of chunks sent)
- ``reject_stream_options``: answer 400 to a request that carries ``stream_options``,
  as strict servers that know no such field do
- ``refuse``: not a behaviour of this server; stop it, or point clients at
  ``dead_url()`` for a port where nothing listens.

Speech to text (``POST /v1/audio/transcriptions``, multipart/form-data, parsed for
real): ``transcript`` (text, or a callable ``(STTRequest) -> str``) is the answer
(``{"text": ...}``); ``stt_fail_status`` / ``stt_fail_times`` fail the next N
(``-1``: always; with ``echo_auth`` the error body echoes the Authorization
header); ``stt_delay_s`` holds each answer back (a hung server); every request
received is appended to ``stt_requests`` (model, file name, bytes, auth header).

Every request body is appended to ``requests``. Messages may carry OpenAI
content parts (a list of ``{"type": "text"}`` and ``{"type": "image_url"}``):
:func:`text_of` is their text, and every image part received is appended to
``image_parts`` (``image_urls()`` gives their URLs, newest request last).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-answer (a killed Vigil) is normal here, not a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


def text_of(content: Any) -> str:
    """A message's text: the string itself, or the text parts of a content list."""
    if isinstance(content, list):
        texts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(str(p.get("text", "")) for p in texts)
    return str(content)


def image_parts_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        part
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") == "image_url"
    ]


def default_reply(messages: list[dict[str, Any]]) -> str:
    users = [text_of(m["content"]) for m in messages if m.get("role") == "user"]
    return "echo: " + (users[-1] if users else "")


@dataclass
class STTRequest:
    """One ``/audio/transcriptions`` request as the fake server parsed it."""

    model: str | None
    filename: str | None
    data: bytes
    content_type: str | None
    auth: str | None
    fields: dict[str, str] = field(default_factory=dict)


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """(form fields, files: name -> (filename, bytes, content type)) of a multipart body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not multipart/form-data")
    fields: dict[str, str] = {}
    files: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        if part.get_filename() is not None:
            files[str(name)] = (part.get_filename(), payload, part.get_content_type())
        else:
            fields[str(name)] = payload.decode()
    return fields, files


class FakeLLM:
    """An OpenAI-compatible ``/v1/chat/completions`` + ``/v1/models`` server."""

    def __init__(self) -> None:
        self.reply: str | Callable[[list[dict[str, Any]]], str] = default_reply
        self.token_delay_s = 0.0
        self.chunk_chars = 0  # 0: one chunk per word
        self.fail_status = 500
        self.fail_times = 0
        self.stall_after_chunks: int | None = None
        self.stall_s = 0.0
        self.garbage = False
        self.no_choices = False
        self.plain_json = False
        self.models_status = 200
        self.echo_auth = False
        self.stream_error = False
        self.reset_after_chunks: int | None = None
        self.send_usage = True
        self.reject_stream_options = False
        self.transcript: str | Callable[[STTRequest], str] = "hello from a voice note"
        self.stt_fail_status = 500
        self.stt_fail_times = 0
        self.stt_delay_s = 0.0
        self.stt_requests: list[STTRequest] = []
        self.requests: list[dict[str, Any]] = []
        self.image_parts: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLM:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    body: Any = {"data": [{"id": "fake"}]}
                    if fake.models_status >= 400:
                        body = fake.error_body(self)
                    fake._send_json(self, fake.models_status, body)
                else:
                    fake._send_json(self, 404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if self.path.rstrip("/") == "/v1/audio/transcriptions":
                    fake._transcribe(self, self.rfile.read(length))
                    return
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(body)
                if isinstance(body, dict) and isinstance(body.get("messages"), list):
                    fake.image_parts.extend(image_parts_of(body["messages"]))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    fake._send_json(self, 404, {"error": {"message": "unknown path"}})
                    return
                fake._complete(self, body)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- behaviour -----------------------------------------------------------
    def answer_for(self, messages: list[dict[str, Any]]) -> str:
        return self.reply(messages) if callable(self.reply) else self.reply

    def chunks(self, text: str) -> list[str]:
        if self.chunk_chars > 0:
            return [text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)]
        words = text.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

    def image_urls(self, request: int = -1) -> list[str]:
        """The image URLs of one request (default: the newest)."""
        body = self.requests[request]
        return [p["image_url"]["url"] for p in image_parts_of(body.get("messages", []))]

    def usage_of(self, messages: list[dict[str, Any]], text: str) -> tuple[int, int]:
        prompt = sum(
            3 + len(text_of(m.get("content", "")).split()) + 85 * len(image_parts_of([m]))
            for m in messages
        )
        return prompt, len(self.chunks(text))

    def error_body(self, handler: BaseHTTPRequestHandler) -> dict[str, Any]:
        message = "scripted failure"
        if self.echo_auth:
            message += f"; you sent Authorization: {handler.headers.get('Authorization')}"
        return {"error": {"message": message}}

    def _send_json(self, handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _transcribe(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            fields, files = parse_multipart(handler.headers.get("content-type", ""), body)
        except ValueError as exc:
            self._send_json(handler, 400, {"error": {"message": str(exc)}})
            return
        filename, data, ctype = files.get("file", (None, b"", None))
        request = STTRequest(
            fields.get("model"), filename, data, ctype, handler.headers.get("Authorization"), fields
        )
        self.stt_requests.append(request)
        if self.stt_delay_s:
            time.sleep(self.stt_delay_s)
        if self.stt_fail_times != 0:
            if self.stt_fail_times > 0:
                self.stt_fail_times -= 1
            self._send_json(handler, self.stt_fail_status, self.error_body(handler))
            return
        if "file" not in files:
            self._send_json(handler, 400, {"error": {"message": "no file"}})
            return
        text = self.transcript(request) if callable(self.transcript) else self.transcript
        try:
            self._send_json(handler, 200, {"text": text})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test)

    def _complete(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if self.reject_stream_options and "stream_options" in body:
            error = {"message": "Unrecognized request argument supplied: stream_options"}
            self._send_json(handler, 400, {"error": error})
            return
        if self.fail_times != 0:
            if self.fail_times > 0:
                self.fail_times -= 1
            self._send_json(handler, self.fail_status, self.error_body(handler))
            return
        text = self.answer_for(body.get("messages", []))
        prompt, completion = self.usage_of(body.get("messages", []), text)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.plain_json or not body.get("stream"):
            answer: dict[str, Any] = {
                "choices": [{"message": {"role": "assistant", "content": text}}]
            }
            if self.send_usage:
                answer["usage"] = usage
            self._send_json(handler, 200, answer)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        asked = (body.get("stream_options") or {}).get("include_usage") is True
        try:
            self._stream(handler, text, usage if self.send_usage and asked else None)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(
        self, handler: BaseHTTPRequestHandler, text: str, usage: dict[str, int] | None = None
    ) -> None:
        write = handler.wfile.write
        if self.garbage:
            write(b"data: {this is not json\n\n")
            handler.wfile.flush()
            return
        if self.stream_error:
            write(f"data: {json.dumps(self.error_body(handler))}\n\n".encode())
            handler.wfile.flush()
            return
        for index, piece in enumerate(self.chunks(text)):
            if self.reset_after_chunks is not None and index == self.reset_after_chunks:
                handler.wfile.flush()
                handler.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                handler.connection.close()  # SO_LINGER 0: the peer sees a reset
                return
            if self.stall_after_chunks is not None and index == self.stall_after_chunks:
                handler.wfile.flush()
                time.sleep(self.stall_s)
                return
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            chunk: dict[str, Any] = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            if self.no_choices:
                chunk = {"id": "x", "object": "chat.completion.chunk"}
            write(f"data: {json.dumps(chunk)}\n\n".encode())
            handler.wfile.flush()
        if usage is not None:
            write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        write(b"data: [DONE]\n\n")
        handler.wfile.flush()
