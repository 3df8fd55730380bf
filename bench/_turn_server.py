"""Bench helper: serve Vigil with an instant in-process model, or a bare endpoint.

``python bench/_turn_server.py vigil|served|bare PORT DATA_DIR``. ``served`` is
Vigil under the uvicorn configuration ``main.py serve`` uses (connection
limits, request-head deadlines). The instant model is
an ``httpx.MockTransport`` that answers every completion with a short SSE
stream at once, so the figures measure Vigil's own work per turn.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import uvicorn
from fastapi import FastAPI

from core.app import create_app
from core.config import Settings
from core.llm import LLMClient

ANSWER = ["Sure", ", here", " is a", " short", " answer", "."]


def instant_model(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/models"):
        return httpx.Response(200, json={"data": [{"id": "instant"}]})
    chunks = [
        "data: " + json.dumps({"choices": [{"delta": {"content": piece}}]}) + "\n\n"
        for piece in ANSWER
    ]
    body = "".join(chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.get("/bare")
    async def bare() -> dict[str, Any]:
        return {"status": "ok"}

    @app.post("/api/chats/{chat_id}/messages")
    async def echo(chat_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"chat_id": chat_id, "reply": "".join(ANSWER)}

    return app


def main() -> None:
    kind, port, data_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    if kind == "bare":
        app = bare_app()
    else:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=data_dir,
            logs_dir=data_dir / "logs",
            admin_token="bench",
            llm_concurrency=64,
            governor_enabled=False,
            llm_base_url="http://instant.invalid/v1",
        )
        llm = LLMClient(
            base_url=settings.llm_base_url,
            model="instant",
            transport=httpx.MockTransport(instant_model),
        )
        app = create_app(settings, llm=llm)
        if kind == "served":
            from core.lifecycle import server_config
            from core.serving import raise_fd_limit

            settings.port = port
            uvicorn.Server(server_config(app, settings, nofile=raise_fd_limit())).run()
            return
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
