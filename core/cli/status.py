"""``vigilctl status``: the one screen an operator wants, worst things first.

Gathered from what is there, each part on its own (one that fails says why,
the others still show):

- the running server, over HTTP: ``/health`` (Telegram, model, database) and
  ``/resources/status`` (emergency mode, throttling), with the admin token
  when one is known; when it does not answer, emergency mode and throttling
  are judged from the open alerts in the database, marked as such;
- the database (read-only): open alerts, maintenance mode, backup runs,
  restarts by reason (``stop`` = a planned stop, counted apart), counts;
- the supervisor's state file: the children, their state and last exit.

``attention`` lists what needs a look, most severe first; it leads the
screen and the JSON.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from core.backups.backup import list_snapshots
from core.cli.output import clip, fmt_age, fmt_bytes, fmt_time, show_table
from core.cli.views import admin_token
from core.config import Settings
from core.database import connect_sync
from core.maintenance import database_summary
from core.process import pid_alive, server_pid
from core.restarts import read_supervisor_state
from core.schema import SCHEMA_VERSION

SEVERITIES = ("critical", "high", "medium", "low")
RANK = {name: i for i, name in enumerate(SEVERITIES)}
# The governor's alert types behind emergency mode and throttling (monitoring/rules.py:
# the rules memory_high, memory_restart, memory_hard, health_low and throttle). core/
# may not import monitoring/; tests/core/cli/test_status.py keeps the two in step.
EMERGENCY_ALERT_TYPES = frozenset(
    {"memory_high", "memory_critical", "memory_hard_limit", "health_degraded"}
)
THROTTLE_ALERT_TYPES = frozenset({"cpu_throttle"})
PLANNED_STOP = "stop"  # the restarts reason scripts/stop.sh records: not a restart
DAY_S = 86400.0


# --- small helpers --------------------------------------------------------------------
def exit_text(code: int | None, sig: int | None = None) -> str | None:
    """``SIGKILL``, ``exit 1``, or None: a signal is named, never shown as a bare dash."""
    if sig is None and code is not None and code < 0:
        sig = -code  # subprocess's convention: -9 is "killed by signal 9"
    if sig:
        try:
            return signal.Signals(sig).name
        except ValueError:
            return f"signal {sig}"
    return None if code is None else f"exit {code}"


def _get_json(url: str, token: str | None = None, timeout: float = 2.0) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, timeout=timeout, headers=headers)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if response.status_code < 500 or isinstance(body, dict) else None


def _part(work: Callable[[], Any]) -> Any:
    """One part of the report; its failure is that part's ``error``, never the command's."""
    try:
        return work()
    except sqlite3.Error as exc:
        return {"error": f"unreadable: {exc}"}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


# --- gathering --------------------------------------------------------------------------
def gather_status(
    settings: Settings,
    queue_depth: Callable[[Settings], dict[str, Any]] | None,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-able dict (never raises for a part)."""
    now = time.time() if now is None else now
    health = _get_json(settings.base_url + "/health")
    if not isinstance(health, dict) or "status" not in health:
        health = None
    supervisor = _supervisor(settings)
    pid = _server_process(settings, supervisor)
    state = "running" if health else ("not answering" if pid else "not running")
    resources = (
        _get_json(settings.base_url + "/resources/status", admin_token(settings))
        if health
        else None
    )
    report: dict[str, Any] = {
        "server": {"state": state, "pid": pid, "url": settings.base_url, "health": health},
        "supervisor": supervisor,
        "resources": resources if isinstance(resources, dict) else None,
        "queue": _part(lambda: queue_depth(settings)) if queue_depth else None,
    }
    report.update(_from_database(settings, now))
    report["governor"] = _governor(report)
    report["telegram"] = _telegram(settings, report)
    snaps = _part(lambda: list_snapshots(settings.backups_dir))
    report["backups"] = (
        snaps
        if isinstance(snaps, dict)
        else {
            "count": len(snaps),
            "latest": snaps[0].to_dict() if snaps else None,
            "total_bytes": sum(s.size_bytes for s in snaps),
        }
    )
    report["attention"] = attention(report)
    return report


def _from_database(settings: Settings, now: float) -> dict[str, Any]:
    db_path = settings.db_path
    if not db_path.is_file():
        return _without_database({"path": str(db_path), "error": "no database file"})
    try:
        conn = connect_sync(db_path, readonly=True)
    except sqlite3.Error as exc:
        out = _without_database({"error": f"unreadable: {exc} (run scripts/vigilctl validate)"})
    else:
        try:
            out = {
                "database": _part(lambda: database_summary(conn, now=now)),
                "alerts": {"open": [], "by_severity": {}, **_part(lambda: open_alerts(conn))},
                "maintenance": {"on": False, **_part(lambda: maintenance_state(conn, now))},
                "backup": _part(lambda: _backup_state(conn, settings, now)),
                "restarts": _part(lambda: restarts_by_reason(conn, now)),
            }
        finally:
            conn.close()
        if "error" in out["database"]:
            out["database"]["error"] += " (run scripts/vigilctl validate)"
        _older_schema(out, out["database"].get("schema_version"))
    out["database"]["path"] = str(db_path)
    out["database"]["size_bytes"] = db_path.stat().st_size
    wal = Path(f"{db_path}-wal")
    out["database"]["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    return out


def _older_schema(out: dict[str, Any], version: Any) -> None:
    """A database the server has not migrated yet lacks the newer tables: say that."""
    if not isinstance(version, int) or version >= SCHEMA_VERSION:
        return
    for part in out.values():
        if "no such table" in str(part.get("error", "")):
            part["error"] = (
                f"not in this database yet (schema {version} of {SCHEMA_VERSION}; "
                "scripts/start.sh migrates it)"
            )


def _without_database(database: dict[str, Any]) -> dict[str, Any]:
    error = {"error": database["error"]}
    return {
        "database": database,
        "alerts": {**error, "open": [], "by_severity": {}},
        "maintenance": {**error, "on": False},
        "backup": dict(error),
        "restarts": dict(error),
    }


def open_alerts(conn: sqlite3.Connection) -> dict[str, Any]:
    """Unresolved alerts, most severe first, then newest first; counts by severity."""
    rows = conn.execute(
        "SELECT id, alert_type, severity, message, recommended_action, raised_at FROM alerts"
        " WHERE resolved_at IS NULL ORDER BY CASE severity WHEN 'critical' THEN 0"
        " WHEN 'high' THEN 1 WHEN 'medium' THEN 2 ELSE 3 END, raised_at DESC, id DESC"
    ).fetchall()
    found = [dict(r) for r in rows]
    counts = {s: sum(1 for a in found if a["severity"] == s) for s in SEVERITIES}
    return {"open": found, "by_severity": {s: n for s, n in counts.items() if n}}


def maintenance_state(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    """Maintenance mode: on while the ``maintenance`` row (id 1) exists and its ``until``
    has not passed (a window that has ended is off; the running server deletes its row)."""
    from core import maintenance_mode

    window = maintenance_mode.read_sync(conn)
    if window is None:
        return {"on": False}
    ended = window.is_over(now)
    return {"on": not ended, **window.to_dict(), "ended": ended}


def _backup_state(conn: sqlite3.Connection, settings: Settings, now: float) -> dict[str, Any]:
    from core.backups.state import read_backup_state

    return read_backup_state(conn, settings, now).to_dict()


def restarts_by_reason(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    """Restarts in the last 24 h by reason; planned stops (``stop``) apart, never restarts."""
    rows = conn.execute(
        "SELECT reason, count(*) AS n FROM restarts WHERE at >= ? GROUP BY reason ORDER BY reason",
        (now - DAY_S,),
    ).fetchall()
    by_reason = {str(r["reason"]): int(r["n"]) for r in rows}
    planned = by_reason.pop(PLANNED_STOP, 0)
    recent = [
        {**dict(r), "exit": exit_text(r["exit_code"], r["signal"])}
        for r in conn.execute(
            "SELECT at, child, reason, exit_code, signal, uptime_s FROM restarts"
            " ORDER BY at DESC, id DESC LIMIT 5"
        ).fetchall()
    ]
    return {
        "last_24h": sum(by_reason.values()),
        "by_reason_24h": by_reason,
        "planned_stops_24h": planned,
        "recent": recent,
    }


def _server_process(settings: Settings, supervisor: dict[str, Any]) -> int | None:
    """The server's own PID: the supervisor's child (the PID file names the supervisor),
    else what the PID file names when no supervisor runs (a bare ``serve``)."""
    child = supervisor["children"].get("server") or {}
    pid = child.get("pid")
    if supervisor["running"] and isinstance(pid, int) and pid_alive(pid):
        return pid
    found = server_pid(settings.pid_file)
    return None if found is not None and found == supervisor["pid"] else found


def _supervisor(settings: Settings) -> dict[str, Any]:
    """The supervisor's state file, trusted only while its process lives."""
    state = read_supervisor_state(settings.data_dir, parent_pid=-1)
    pid = state.get("pid")
    running = isinstance(pid, int) and not state.get("stopped") and pid_alive(pid)
    children: dict[str, Any] = {}
    for name, child in (state.get("children") or {}).items():
        if not isinstance(child, dict):
            continue
        last = child.get("last_exit") if isinstance(child.get("last_exit"), dict) else None
        children[name] = {
            **{k: child.get(k) for k in ("state", "pid", "restarts_in_window", "flap_max")},
            "last_exit": last,
            "last_exit_text": exit_text(last.get("code"), last.get("signal")) if last else None,
        }
    return {"running": running, "pid": pid if running else None, "children": children}


def _governor(report: dict[str, Any]) -> dict[str, Any]:
    """Emergency mode and throttling: live from the server, else from the open alerts."""
    resources = report["resources"]
    health = report["server"]["health"] or {}
    emergency = resources.get("emergency") if isinstance(resources, dict) else None
    if isinstance(emergency, dict) and "emergency_mode" in emergency:
        last = (
            emergency.get("last_cleanup") if isinstance(emergency.get("last_cleanup"), dict) else {}
        )
        return {
            "source": "server",
            "emergency_mode": bool(emergency.get("emergency_mode")),
            "throttling": bool(emergency.get("cpu_throttling"))
            or "throttled" in (health.get("reasons") or []),
            "emergency_cleanups": emergency.get("emergency_cleanups"),
            "last_cleanup_freed_mb": last.get("freed_mb") if last else None,
            "note": None,
        }
    types = {a["alert_type"] for a in report["alerts"]["open"]}
    state = report["server"]["state"]
    why = {
        "running": "the server answered without its resources report",
        "not answering": "server not answering",
        "not running": "server not running",
    }[state]
    return {
        "source": "database",
        "emergency_mode": bool(types & EMERGENCY_ALERT_TYPES),
        "throttling": bool(types & THROTTLE_ALERT_TYPES),
        "emergency_cleanups": None,
        "last_cleanup_freed_mb": None,
        "note": f"{why}; judged from the open alerts in the database",
    }


def _telegram(settings: Settings, report: dict[str, Any]) -> dict[str, Any]:
    health = report["server"]["health"]
    if health and "telegram" in health:
        return {"state": health["telegram"], "source": "server"}
    if not settings.telegram_configured:
        return {"state": "not_configured", "source": "settings"}
    return {"state": "unknown", "source": None, "note": f"server {report['server']['state']}"}


# --- what needs a look -----------------------------------------------------------------
def attention(report: dict[str, Any]) -> list[dict[str, str]]:
    """What needs the operator, most severe first (stable within a severity)."""
    items: list[dict[str, str]] = []

    def add(severity: str, what: str, detail: str) -> None:
        items.append({"severity": severity, "what": what, "detail": detail})

    server = report["server"]
    if server["state"] == "not answering":
        add("critical", "server", f"pid {server['pid']} runs but {server['url']} does not answer")
    elif server["state"] == "not running":
        add("high", "server", "not running (start it with scripts/start.sh)")
    health = server["health"] or {}
    if health.get("status") == "unhealthy":
        add("critical", "health", "unhealthy: " + ", ".join(health.get("reasons") or []))
    for alert in report["alerts"]["open"]:
        severity = alert["severity"] if alert["severity"] in RANK else "low"
        add(severity, f"alert {alert['alert_type']}", _alert_detail(alert))
    if "error" in report["alerts"] and "no database file" not in report["alerts"]["error"]:
        add("high", "alerts", report["alerts"]["error"])
    governor = report["governor"]
    marked = f" ({governor['note']})" if governor["note"] else ""
    if governor["emergency_mode"]:
        add("high", "emergency mode", "on: aggressive cleanup, lower LLM concurrency" + marked)
    if governor["throttling"]:
        add("high", "throttling", "on: new turns get 429 until CPU falls" + marked)
    maintenance = report["maintenance"]
    if maintenance.get("on"):
        add("medium", "maintenance", _maintenance_text(maintenance))
    backup = report["backup"]
    if backup.get("status") == "failed":
        add("high", "backup", str(backup.get("message")))
    elif backup.get("status") == "stale":
        add("medium", "backup", str(backup.get("message")))
    elif "error" in backup and "no database file" not in backup["error"]:
        add("medium", "backup", f"state unknown: {backup['error']}")
    for name, child in report["supervisor"]["children"].items():
        if not report["supervisor"]["running"]:
            break
        if child.get("state") == "failed":
            add("critical", f"child {name}", "failed: the supervisor gave up restarting it")
        elif child.get("state") == "backoff":
            add("high", f"child {name}", f"restarting after {child.get('last_exit_text')}")
    telegram = report["telegram"]["state"]
    if telegram not in ("connected", "not_configured", "starting", "unknown"):
        add("high", "telegram", telegram)
    restarts = report["restarts"]
    if isinstance(restarts.get("last_24h"), int) and restarts["last_24h"] >= 3:
        add("medium", "restarts", f"{restarts['last_24h']} in 24 h ({_reasons(restarts)})")
    if health.get("status") == "degraded" and health.get("reasons"):
        add("low", "health", "degraded: " + ", ".join(health["reasons"]))
    return sorted(items, key=lambda item: RANK[item["severity"]])


def _alert_detail(alert: dict[str, Any]) -> str:
    text = f"{alert['message']} (since {fmt_age(alert['raised_at'])})"
    if alert.get("recommended_action"):
        text += f"; do: {alert['recommended_action']}"
    return text


def _maintenance_text(m: dict[str, Any]) -> str:
    if m.get("ended"):
        return f"off (the window ended {fmt_time(m['until'])}: {m['reason']})"
    text = f"on since {fmt_time(m['started_at'])}: {m['reason']}"
    if m.get("until"):
        text += f"; until {fmt_time(m['until'])}"
    return text


def _reasons(restarts: dict[str, Any]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in restarts["by_reason_24h"].items()) or "none"


# --- the screen --------------------------------------------------------------------------
def _on_off(value: bool | None, note: str | None) -> str:
    text = "ON" if value else "off"
    return text + (f" ({note})" if note else "")


def render_status(report: dict[str, Any]) -> None:
    show_table(
        "Needs attention (worst first)",
        ("severity", "what", "detail"),
        [(a["severity"].upper(), a["what"], a["detail"]) for a in report["attention"]],
        empty="nothing",
    )
    server, db, queue = report["server"], report["database"], report["queue"]
    health = server["health"] or {}
    alerts = report["alerts"]
    governor = report["governor"]
    rows: list[tuple[str, str]] = [
        (
            "alerts",
            alerts["error"]
            if "error" in alerts
            else (
                ", ".join(f"{n} {s}" for s, n in alerts["by_severity"].items()) + " open"
                if alerts["by_severity"]
                else "none open"
            ),
        ),
        ("emergency mode", _on_off(governor["emergency_mode"], governor["note"])),
        ("throttling", _on_off(governor["throttling"], governor["note"])),
        (
            "maintenance",
            _maintenance_text(report["maintenance"])
            if "reason" in report["maintenance"]
            else report["maintenance"].get("error", "off"),
        ),
        ("backup", _backup_line(report["backup"])),
        ("server", f"{server['state']}" + (f" (pid {server['pid']})" if server["pid"] else "")),
        ("health", str(health.get("status", "-")) + _health_detail(health)),
        ("telegram", _telegram_line(report["telegram"])),
        ("supervisor", _supervisor_line(report["supervisor"])),
    ]
    if report["supervisor"]["running"]:
        rows += [
            (f"  {name}", _child_line(child))
            for name, child in report["supervisor"]["children"].items()
        ]
    rows += [
        ("restarts", _restarts_line(report["restarts"])),
        ("resources", _resources_line(report["resources"]) if server["health"] else "-"),
    ]
    if "error" in db:
        rows.append(("database", db["error"]))
    else:
        rows += [
            (
                "database",
                f"{fmt_bytes(db['size_bytes'])} (+{fmt_bytes(db['wal_bytes'])} WAL), "
                f"schema {db['schema_version']}",
            ),
            (
                "messages",
                f"{db['messages']} in {db['chats']} chats, last {fmt_age(db['last_message_at'])}",
            ),
            ("tasks", f"{db['tasks']['failed_24h']} failed in 24 h"),
        ]
    rows.append(("queue", _queue_line(queue)))
    backups = report["backups"]
    latest = backups.get("latest")
    rows.append(
        (
            "snapshots",
            backups["error"]
            if "error" in backups
            else f"{backups['count']} ({fmt_bytes(backups['total_bytes'])})"
            + (f", latest {latest['name']} {fmt_age(latest['created_at'])}" if latest else ""),
        )
    )
    show_table("Vigil status", ("what", "state"), rows)
    if alerts["open"]:
        show_table(
            "Open alerts",
            ("severity", "alert", "since", "message", "do"),
            [
                (
                    a["severity"],
                    a["alert_type"],
                    fmt_age(a["raised_at"]),
                    a["message"],
                    a["recommended_action"],
                )
                for a in alerts["open"]
            ],
        )
    recent = report["restarts"].get("recent") or []
    if recent:
        show_table(
            "Recent restarts and stops",
            ("at", "child", "reason", "exit", "uptime s"),
            [
                (
                    fmt_time(r["at"]),
                    r["child"],
                    "stop (planned)" if r["reason"] == PLANNED_STOP else r["reason"],
                    r["exit"],
                    f"{r['uptime_s']:.0f}" if r["uptime_s"] is not None else None,
                )
                for r in recent
            ],
        )
    if "error" not in db and db["tasks"]["recent"]:
        show_table(
            "Recent task runs",
            ("id", "task", "status", "processed", "took s", "error"),
            [
                (
                    t["id"],
                    t["name"],
                    t["status"],
                    t["processed_at"],
                    t["duration_s"],
                    clip(t["error"] or "", 60) or None,
                )
                for t in db["tasks"]["recent"]
            ],
        )


def _backup_line(backup: dict[str, Any]) -> str:
    if "error" in backup:
        return f"unknown: {backup['error']}"
    text = str(backup["message"])  # says failed, stale, never or disabled itself
    if backup.get("failures_24h"):
        text += f"; {backup['failures_24h']} failed in 24 h"
    return text


def _telegram_line(telegram: dict[str, Any]) -> str:
    return telegram["state"] + (f" ({telegram['note']})" if telegram.get("note") else "")


def _supervisor_line(supervisor: dict[str, Any]) -> str:
    if not supervisor["running"]:
        return "not running"
    return f"pid {supervisor['pid']}, {len(supervisor['children'])} children"


def _child_line(child: dict[str, Any]) -> str:
    parts = [str(child.get("state"))]
    if child.get("pid"):
        parts[0] += f" (pid {child['pid']})"
    if child.get("restarts_in_window"):
        parts.append(f"restarts in the flap window: {child['restarts_in_window']}")
    last = child.get("last_exit")
    text = child.get("last_exit_text")
    if last and text:
        text = text.replace("exit ", "code ")  # "last exit code 1", "last exit SIGKILL"
        parts.append(f"last exit {text} {fmt_age(last.get('at'))}")
    return ", ".join(parts)


def _restarts_line(restarts: dict[str, Any]) -> str:
    if "error" in restarts:
        return restarts["error"]
    text = f"{restarts['last_24h']} in 24 h"
    if restarts["by_reason_24h"]:
        text += f" ({_reasons(restarts)})"
    return text + f"; planned stops {restarts['planned_stops_24h']}"


def _resources_line(resources: Any) -> str:
    if not isinstance(resources, dict):
        return "unavailable"
    try:
        return _resources_summary(resources)
    except (TypeError, ValueError, AttributeError):  # another version's shape: say little
        return "answered"


def _resources_summary(resources: dict[str, Any]) -> str:
    health = resources.get("health", resources)
    current = health.get("current_resources", {}) if isinstance(health, dict) else {}
    parts = []
    if "health_score" in health:
        parts.append(f"score {health['health_score']:.0f}")
    for key, label in (("memory_mb", "MB"), ("cpu_percent", "% CPU")):
        if key in current:
            parts.append(f"{current[key]:.0f} {label}")
    if "active_sessions" in current:
        parts.append(f"{current['active_sessions']} sessions")
    return ", ".join(parts) or "answered"


def _health_detail(health: dict[str, Any]) -> str:
    keys = ("database", "llm")
    parts = [f"{k} {health[k]}" for k in keys if k in health]
    return f" ({', '.join(parts)})" if parts else ""


def _queue_line(queue: dict[str, Any] | None) -> str:
    if queue is None:
        return "-"
    if "error" in queue:
        return f"unavailable: {queue['error']}"
    return f"{queue['pending']} pending, {queue['scheduled']} scheduled ({queue['backend']})"
