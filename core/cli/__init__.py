"""The operator CLI: ``python main.py status|backup|restore|snapshots|...``.

- ``commands``: status, history, search, summarize, export, and ``register``,
  which adds every operator command to main.py's Typer app;
- ``backup``: backup, restore, snapshots, cleanup, validate;
- ``views``: what the commands show (status gathering, tables, summaries);
- ``output``: one-line errors, Rich tables, progress bars, JSON.
"""

from core.cli.commands import register

__all__ = ["register"]
