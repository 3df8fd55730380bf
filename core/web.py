"""Web pages served by Vigil itself (no CDN, no build step): the local chat page.

The page is static; it talks to the local chat API with the admin token the
operator types in (kept in the browser's localStorage, never in the page).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

STATIC = Path(__file__).with_name("static")
router = APIRouter(tags=["web"])


@router.get("/chat", response_class=HTMLResponse)
async def chat_page() -> HTMLResponse:
    html = (STATIC / "chat.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/", include_in_schema=False)
async def index() -> RedirectResponse:
    return RedirectResponse("/chat")
