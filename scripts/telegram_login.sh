#!/usr/bin/env bash
# Log Vigil's Telegram account in.
#   scripts/telegram_login.sh                 user account: phone, code, 2FA password
#   scripts/telegram_login.sh --bot-token T   a bot (or set VIGIL_TELEGRAM_BOT_TOKEN)
# Needs VIGIL_TELEGRAM_API_ID and VIGIL_TELEGRAM_API_HASH; refuses while the server
# holds data/telegram.session (stop it first with scripts/stop.sh). See docs/telegram.md.
# Exit: 0 logged in, 1 login failed, 2 configuration, 3 session in use.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[ -x "$PY" ] || die "not installed yet: run scripts/start.sh once (it creates .venv)"
exec "$PY" main.py telegram-login "$@"
