"""Telegram: the gateway to Telethon and everything behind it.

The modules of this package are the only ones that import Telethon (an import
contract checks it). ``gateway`` talks to Telegram; ``bot``/``rules`` decide who is
answered; ``channel`` is the Channel adapter; ``app`` starts it all in the
server; ``cli`` holds the login/logout commands.
"""
