#!/usr/bin/env bash
# Log Vigil's Telegram session out and delete data/telegram.session.
#   scripts/telegram_logout.sh           log out at Telegram, then delete the session
#   scripts/telegram_logout.sh --local   only delete the session files (Telegram unreachable)
# Refuses while the server holds the session (stop it first with scripts/stop.sh).
# Exit: 0 done, 1 logout failed (session kept), 2 configuration, 3 session in use.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[ -x "$PY" ] || die "not installed yet: run scripts/start.sh once (it creates .venv)"
exec "$PY" main.py telegram-logout "$@"
