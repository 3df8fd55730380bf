"""Backups of ``system.db`` and everything that keeps them honest.

- ``backup``: snapshots (online copy, compression, checksums, manifests);
- ``temp``: temp files of backups in progress, and the sweep of stale ones;
- ``restore``: verified restore to a new file or onto the stopped server's database;
- ``file_users``: who holds a lock on, or has open, a file right now (restore's guard);
- ``integrity``: the checks behind ``validate``;
- ``retention``: which automatic snapshots to keep.
"""
