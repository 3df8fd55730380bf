"""Private files, written whole or not at all.

Every file Vigil writes under ``data/`` (settings copies, manifests, markers,
state) is the owner's alone (0600) and replaces the old one atomically: a
crash or a full disk midway leaves the previous file, never half of a new one.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(
    path: Path, content: bytes | str, *, tmp: Path | None = None, sync: bool = True
) -> None:
    """Write ``content`` to ``path`` (0600) through ``tmp``, then rename it in place.

    ``tmp`` defaults to ``.NAME.tmp`` beside ``path``; it is removed on failure.
    ``sync``: fsync before the rename (what must survive a power cut).
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    tmp = tmp if tmp is not None else path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # an existing tmp keeps its mode through O_TRUNC
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
