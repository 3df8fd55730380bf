"""MediaStore under attack: paths that leave the store, umasks, links, a full
disk, many saves at once. Real files, real permissions, real subprocesses."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from PIL import Image

from core.errors import StorageError
from core.media import MediaStore, PreparedImage, prepare_image

ROOT = Path(__file__).resolve().parents[3]


def image() -> PreparedImage:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, "PNG")
    return prepare_image(out.getvalue(), max_bytes=10_000_000, max_side=1568)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize(
    "relative", ["../secret.jpg", "/etc/passwd", "", ".", "a/../../secret.jpg", "a/../.."]
)
def test_paths_that_leave_the_store_are_refused(tmp_path: Path, relative: str) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    store = MediaStore(tmp_path / "media")
    store.root.mkdir()
    with pytest.raises(ValueError):
        store.path_of(relative)
    assert store.read(relative) is None
    assert store.remove([relative]) == 0
    assert (tmp_path / "secret.jpg").exists()


def test_a_link_inside_the_store_pointing_out_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    store = MediaStore(tmp_path / "media")
    (store.root / "f").mkdir(parents=True)
    (store.root / "f" / "x.jpg").symlink_to(secret)
    (store.root / "out").symlink_to(tmp_path)
    assert store.read("f/x.jpg") is None and store.read("out/secret.jpg") is None
    assert store.remove(["f/x.jpg", "out/secret.jpg"]) == 0
    assert secret.read_bytes() == b"secret"


def test_a_chat_folder_that_is_a_link_out_of_the_store_is_not_written(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media")
    first = store.save("chat", image())  # the chat's folder, then replaced by a link
    folder = store.root / first.split("/")[0]
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder.symlink_to(elsewhere)
    with pytest.raises(StorageError):
        store.save("chat", image())
    assert not list(elsewhere.iterdir())


SAVE_UNDER_UMASK = """
import io, os, sys
from pathlib import Path
from PIL import Image
from core.media import MediaStore, prepare_image
os.umask(int(sys.argv[2], 8))
out = io.BytesIO()
Image.new("RGB", (8, 8)).save(out, "PNG")
print(MediaStore(Path(sys.argv[1])).save("chat", prepare_image(out.getvalue(),
      max_bytes=10_000_000, max_side=1568)))
"""


@pytest.mark.parametrize("umask", ["000", "022", "077"])
def test_dirs_are_0700_and_files_0600_whatever_the_umask(tmp_path: Path, umask: str) -> None:
    root = tmp_path / "data" / "media"  # neither exists yet
    done = subprocess.run(
        [sys.executable, "-c", SAVE_UNDER_UMASK, str(root), umask],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    relative = done.stdout.strip()
    assert mode(root) == 0o700
    assert mode(root / relative.split("/")[0]) == 0o700
    assert mode(root / relative) == 0o600


def test_a_store_that_is_a_file_gives_a_storage_error(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.write_text("not a directory")
    with pytest.raises(StorageError) as caught:
        MediaStore(root).save("chat", image())
    assert caught.value.message.startswith("the image could not be stored")


def test_a_full_disk_gives_a_storage_error_and_leaves_no_part_file(tmp_path: Path) -> None:
    # A real write that fails: the file-size limit (EFBIG), like a full disk.
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from core.errors import StorageError
        from core.media import MediaStore, PreparedImage
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        try:
            MediaStore(Path(sys.argv[1])).save("chat", PreparedImage(b"x" * 5000, 8, 8, 5000))
        except StorageError as exc:
            print(type(exc).__name__, exc.message)
        """
    )
    root = tmp_path / "media"
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("StorageError the image could not be stored")
    assert not [p for p in root.rglob("*") if p.is_file()]


def test_many_saves_at_once_each_get_their_own_file(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media")
    prepared = image()
    saved: list[str] = []
    errors: list[BaseException] = []

    def save(n: int) -> None:
        try:
            saved.append(store.save(f"chat-{n % 3}", prepared))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(n,)) for n in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(saved)) == 60 and sorted(store.files()) == sorted(saved)
    assert all(store.read(p) == prepared.data for p in saved)
    assert not list(store.root.rglob("*.part"))
    assert store.remove(saved) == 60 and not list(store.files())
