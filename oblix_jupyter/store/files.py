"""Private files written whole or not at all, JSON read from them with one clear error, and where they live.

Every byte the store keeps on disk goes through here: folders 0700, files 0600, and a
write that a kill interrupts leaves the old file, never half of the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from ..errors import CorruptSession, ImportFormatError

FILE_MODE = 0o600
DIR_MODE = 0o700


def default_base_dir() -> str:
    """The file store's directory when nothing names one: ``$OBLIX_HOME/sessions``, else ``~/.oblix/sessions``."""
    home = os.environ.get("OBLIX_HOME") or os.path.join(os.path.expanduser("~"), ".oblix")
    return os.path.join(home, "sessions")


def ensure_private_dir(path: str) -> None:
    """Create ``path`` and its missing parents, every level readable by the owner only.

    ``os.makedirs(mode=...)`` gives that mode to the last level alone (the parents get
    the default, 0755 under the usual umask), and the umask masks it too, so each level
    is made here and then set to 0700. Levels that exist already are left as they are:
    they may be the user's own directories.
    """
    missing = []
    level = os.path.abspath(path)
    while not os.path.isdir(level) and os.path.dirname(level) != level:
        missing.append(level)
        level = os.path.dirname(level)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # made meanwhile by another process, which sets its mode as well
        os.chmod(directory, DIR_MODE)


def remove_file(path: str) -> None:
    """Remove ``path`` if it is there (absent either way afterwards, also under a stray file where a folder was expected)."""
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        pass


def atomic_write_bytes(path: str, payload: bytes, durable: bool = True) -> None:
    """Write ``payload`` to ``path`` so that readers see the old or the new file, never a mix.

    The temp file lives in the same directory so ``os.replace`` is a rename on one
    file system; ``mkstemp`` creates it 0600, which the final file keeps. ``durable``
    (fsync before the rename) can be skipped for caches that are rebuilt when lost.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def dump_json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def read_json_file(path: str) -> Any:
    """Parse a JSON file, turning every way it can be unreadable into ``CorruptSession``.

    ``FileNotFoundError`` is left to the caller: a missing file is not corrupt.
    """
    return parse_json(path, read_bytes(path))


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptSession(path, exc.strerror or str(exc)) from exc


def parse_json(path: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = "empty file" if not raw.strip() else f"invalid JSON: {exc}"
        raise CorruptSession(path, reason) from exc


def read_import_file(path: str) -> Any:
    """Parse a JSON file given to import; every way it can be unreadable becomes ``ImportFormatError``."""
    try:
        return read_json_file(path)
    except FileNotFoundError:
        raise ImportFormatError(f"{path}: no such file.") from None
    except CorruptSession as exc:
        raise ImportFormatError(f"{path}: {exc.reason}.") from None
