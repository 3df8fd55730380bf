"""Admin endpoints for database maintenance and data deletion (admin token).

- ``POST /admin/db/{operation}`` (``vacuum``, ``analyze``, ``reindex``,
  ``checkpoint``; ``?mode=`` for the checkpoint): runs on the server's one
  writer connection, so the single-writer invariant holds while the server
  runs; chat turns wait for the lock meanwhile rather than fail.
- ``POST /admin/delete``: a chat's or a Telegram user's data, through the
  same writer, then the chat's cached context window is dropped. Without
  ``confirm`` it only counts what would go.

``scripts/vigilctl db ...`` and ``scripts/vigilctl delete ...`` call these when
the server answers, and do the same work directly when it is stopped.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from core import dbops
from core.http import check_admin
from core.runtime import RuntimeDep

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(check_admin)])


@router.post("/db/{operation}")
async def db_operation(
    runtime: RuntimeDep,
    operation: str,
    mode: Annotated[str, Query(max_length=16)] = "truncate",
) -> dict[str, Any]:
    dbops.check_operation(operation, mode)
    db = runtime.db
    if operation == "vacuum":
        dbops.check_vacuum_space(db.path)  # refuse before taking the lock
    log.info("database %s requested (mode %s)", operation, mode)
    result: dict[str, Any] = await db.run_exclusive(
        lambda conn: dbops.run_operation(conn, db.path, operation, mode=mode)
    )
    log.info("database %s done in %.2f s", operation, result["duration_s"])
    return result


class DeleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Literal["chat", "user"]
    target: str = Field(min_length=1, max_length=200)
    by: str = Field(default="api", min_length=1, max_length=200)
    confirm: bool = False
    vacuum: bool = True


@router.post("/delete")
async def delete(runtime: RuntimeDep, body: DeleteIn) -> dict[str, Any]:
    db = runtime.db
    data_dir = runtime.settings.data_dir
    plan = await db.run_exclusive(
        lambda conn: dbops.plan_deletion(conn, body.scope, body.target, data_dir=data_dir)
    )
    if not body.confirm:
        return {"dry_run": True, **plan.to_dict()}
    # A turn running in one of these chats would store its reply after the
    # deletion: wait for it (new turns there wait for the deletion).
    async with runtime.chat.quiet(plan.affected):
        await runtime.chat.usage.flush(db)  # usage rows still in memory go too
        result: dict[str, Any] = await db.run_exclusive(
            lambda conn: dbops.delete_data(
                conn,
                body.scope,
                body.target,
                data_dir=data_dir,
                db_path=db.path,
                by=body.by,
                vacuum=body.vacuum,
            )
        )
        for chat in result["affected"]:
            runtime.memory.evict(chat)  # the cached window still holds the turns
    log.info(
        "deleted the data of %s %s: %d message(s), %d image(s), %d file(s) (by %s)",
        body.scope,
        result["target"],
        result["messages"],
        result["images"],
        result["files"],
        body.by,
    )
    return {"dry_run": False, **result}
