"""Vigil: a self-hosted, self-supervising AI chat server for Telegram."""

__version__ = "0.1.0"
