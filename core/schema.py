"""Schema of ``data/system.db``, as an ordered list of migrations.

``PRAGMA user_version`` holds the number of migrations applied. Each migration
runs in its own transaction together with the version bump, so a crash mid-way
leaves the previous version intact. Never edit a released migration; append.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: chats, messages, full-text index
    """
    CREATE TABLE chats (
        id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        title TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        context_start_id INTEGER NOT NULL DEFAULT 0,
        summary TEXT NOT NULL DEFAULT '',
        summary_upto_id INTEGER NOT NULL DEFAULT 0,
        message_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        tokens INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        external_id TEXT,
        author TEXT
    );
    CREATE INDEX messages_chat_id ON messages (chat_id, id);
    CREATE INDEX messages_created_at ON messages (created_at);
    CREATE TRIGGER messages_chat_upsert BEFORE INSERT ON messages BEGIN
        INSERT OR IGNORE INTO chats (id, channel, created_at, updated_at)
        VALUES (
            new.chat_id,
            CASE WHEN instr(new.chat_id, ':') > 0
                 THEN substr(new.chat_id, 1, instr(new.chat_id, ':') - 1)
                 ELSE 'local' END,
            new.created_at,
            new.created_at
        );
    END;
    CREATE TRIGGER messages_chat_count AFTER INSERT ON messages BEGIN
        UPDATE chats SET message_count = message_count + 1, updated_at = new.created_at
        WHERE id = new.chat_id;
    END;
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content='messages', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
        VALUES ('delete', old.id, old.content);
        UPDATE chats SET message_count = message_count - 1 WHERE id = old.chat_id;
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
        VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END;
    """,
    # 2: operations tables: background task runs, restarts, alerts
    """
    CREATE TABLE server_tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT,
        name TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('queued', 'running', 'completed', 'failed')),
        created_at TEXT NOT NULL DEFAULT (datetime('now')),
        processed_at TEXT,
        duration_s REAL,
        error TEXT,
        result TEXT
    );
    CREATE INDEX server_tasks_status ON server_tasks (status, processed_at);
    CREATE TABLE restarts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        child TEXT NOT NULL,
        reason TEXT NOT NULL,
        exit_code INTEGER,
        signal INTEGER,
        uptime_s REAL,
        last_rss_mb REAL,
        attempt INTEGER,
        backoff_s REAL,
        detail TEXT
    );
    CREATE INDEX restarts_at ON restarts (at);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_type TEXT NOT NULL,
        severity TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
        message TEXT NOT NULL,
        recommended_action TEXT,
        raised_at REAL NOT NULL,
        resolved_at REAL,
        snapshot TEXT
    );
    CREATE INDEX alerts_raised_at ON alerts (raised_at);
    """,
    # 3: the Telegram inbound ledger (each message answered exactly once) and the
    #    strangers already refused; user turns found again by their Telegram id
    """
    CREATE TABLE telegram_inbound (
        chat_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        sender_id INTEGER,
        sent_at REAL NOT NULL,
        received_at REAL NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'answered', 'ignored', 'refused', 'stale')),
        settled_at REAL,
        payload TEXT NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX telegram_inbound_pending ON telegram_inbound (received_at)
        WHERE status = 'pending';
    CREATE TABLE telegram_refusals (
        chat_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        refused_at REAL NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX telegram_refusals_at ON telegram_refusals (refused_at);
    CREATE INDEX messages_external_id ON messages (chat_id, external_id)
        WHERE external_id IS NOT NULL;
    """,
    # 4: operations state: monotonic counters (Prometheus semantics across restarts,
    #    pruning and restores), backup runs, maintenance mode, the data-deletion record
    """
    CREATE TABLE counters (
        name TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '',
        value REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (name, labels)
    ) WITHOUT ROWID;
    CREATE TABLE backup_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at REAL NOT NULL,
        finished_at REAL,
        ok INTEGER,
        trigger TEXT NOT NULL DEFAULT 'scheduled',
        path TEXT,
        size_bytes INTEGER,
        error TEXT
    );
    CREATE INDEX backup_runs_started_at ON backup_runs (started_at);
    CREATE TABLE maintenance (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        reason TEXT NOT NULL,
        started_at REAL NOT NULL,
        until REAL,
        set_by TEXT NOT NULL DEFAULT 'cli'
    );
    CREATE TABLE deletions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deleted_at REAL NOT NULL,
        deleted_by TEXT NOT NULL,
        scope TEXT NOT NULL CHECK (scope IN ('chat', 'user')),
        target TEXT NOT NULL,
        messages INTEGER NOT NULL DEFAULT 0,
        files INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 5: usage accounting: one row per model call (tokens from the model's own usage,
    #    or estimated), its daily roll-up, per-user budget overrides and the one-time
    #    notices already sent for a budget period
    """
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        chat_id TEXT NOT NULL,
        user_id TEXT,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        estimated INTEGER NOT NULL DEFAULT 0,
        latency_ms REAL,
        ttft_ms REAL,
        outcome TEXT NOT NULL
    );
    CREATE INDEX usage_at ON usage (at);
    CREATE INDEX usage_user_at ON usage (user_id, at);
    CREATE INDEX usage_chat_at ON usage (chat_id, at);
    CREATE TABLE usage_daily (
        day TEXT NOT NULL,
        user_id TEXT NOT NULL DEFAULT '',
        chat_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        estimated_requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, user_id, chat_id, kind, model)
    ) WITHOUT ROWID;
    CREATE TABLE budgets (
        user_id TEXT PRIMARY KEY,
        day_tokens INTEGER,
        month_tokens INTEGER,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE budget_notices (
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        level INTEGER NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (scope, period, level)
    ) WITHOUT ROWID;
    """,
    # 6: the model profile a chat picked with /model (NULL: the default)
    """
    ALTER TABLE chats ADD COLUMN model TEXT;
    """,
    # 7: images sent with a message; the files live under data/media/ (path relative to it)
    """
    CREATE TABLE message_images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        chat_id TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        mime TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        caption TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE INDEX message_images_message ON message_images (message_id);
    CREATE INDEX message_images_chat ON message_images (chat_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
