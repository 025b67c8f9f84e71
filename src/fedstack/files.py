"""Writing files that must survive a crash or a power cut, and files that must stay private.

`os.replace` alone makes a replacement atomic for running processes, but after a power cut the
file system may hold the new name pointing at blocks that were never written (an empty or torn
file): the data has to be fsynced before the rename, and the directory after it so that the
rename itself is on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE = 0o600  # files derived from private data or holding secrets: the owner only
PUBLIC = 0o644


def write_atomic(path, data: bytes, private: bool = False) -> Path:
    """Replace `path` with `data`: readers and a crash see the old file or the new one, never a mix.

    The data goes to a temporary file in the same directory (created 0600, so a private file is
    never readable by others, not even for a moment), is fsynced, gets its final mode (0600 when
    `private`, else 0644), is renamed over `path`, and the directory is fsynced. A failure (a full
    disk) leaves `path` as it was and no temporary file behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), PRIVATE if private else PUBLIC)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name(exc, path)
        raise
    fsync_dir(path.parent)
    return path


def append_line(path, line: str) -> None:
    """Append `line` and a newline to a text file and fsync it, so a finished line survives a power cut.

    A crash during the write can still leave a torn last line (no newline at its end): readers skip it.
    """
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        _name(exc, path)
        raise


def create_private(path) -> Path:
    """Create `path` empty with mode 0600 if it does not exist (an existing file is made 0600 too).

    For files another library opens itself (SQLite): created here first, they never exist with a
    umask's world-readable mode.
    """
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
    finally:
        os.close(fd)
    return path


def fsync_dir(directory) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory (EINVAL): nothing more can be done there
    finally:
        os.close(fd)


def _name(exc: BaseException, path: Path) -> None:
    """Name the file in an OSError that has no name (a failed write says only "No space left on device")."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)
