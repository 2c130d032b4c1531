"""Crash-safe, multi-process-safe file storage under TinyDB.

Several kernels, a chat panel and the command line may write the same session at
once, and any of them may be killed mid-write. TinyDB's stock ``JSONStorage``
rewrites the file in place, so a kill leaves half a file and two writers lose each
other's changes. This storage fixes both at the one place every write passes:
it holds an exclusive per-file lock for the lifetime of the TinyDB instance (so a
read-modify-write is one transaction) and replaces the file atomically.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import tempfile
import threading
from collections import OrderedDict
from typing import Any

from tinydb.storages import Storage

from ..errors import CorruptSession, StoreBusy

FILE_MODE = 0o600
DIR_MODE = 0o700


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
    return _parse(path, _read_bytes(path))


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptSession(path, exc.strerror or str(exc)) from exc


def _parse(path: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = "empty file" if not raw.strip() else f"invalid JSON: {exc}"
        raise CorruptSession(path, reason) from exc


ListCodes = dict[tuple[str, str, str], tuple[list[Any], bytes]]
"""Per (table, document, key): a top-level list of a document as last written, and its encoding."""


def dump_tables(data: Any, kept: ListCodes, fresh: ListCodes) -> bytes:
    """``dump_json(data)``, byte for byte, re-encoding only the list elements added since the last write.

    A long session is otherwise re-encoded whole on every append, the largest cost of
    a turn's two writes. A document's top-level lists (``messages``) keep their encoding
    in ``kept``, which is extended while the list still starts with the very objects
    encoded last time. That is sound because the store only ever appends messages: it
    never changes a stored message in place (a replaced one is a new object).
    ``fresh`` receives what to keep for the next write. Anything but TinyDB's
    ``{table: {id: document}}`` shape with text keys is encoded whole.
    """
    if not _text_keyed(data) or not all(_text_keyed(table) and all(map(_text_keyed, table.values())) for table in data.values()):
        return dump_json(data)
    pieces: list[bytes] = []
    for name, table in data.items():
        pieces += (b"," if pieces else b"{", dump_json(name), b":")
        for number, (doc_id, doc) in enumerate(table.items()):
            pieces += (b"," if number else b"{", dump_json(doc_id), b":")
            for field, (key, value) in enumerate(doc.items()):
                pieces += (b"," if field else b"{", dump_json(key), b":", _value(value, (name, doc_id, key), kept, fresh))
            pieces.append(b"}" if doc else b"{}")
        pieces.append(b"}" if table else b"{}")
    pieces.append(b"}" if data else b"{}")
    return b"".join(pieces)


def _text_keyed(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _value(value: Any, where: tuple[str, str, str], kept: ListCodes, fresh: ListCodes) -> bytes:
    if not isinstance(value, list):
        return dump_json(value)
    seen, code = kept.get(where, (None, b""))
    if seen is None or len(value) < len(seen) or not all(map(operator.is_, value, seen)):
        code = dump_json(value)
    elif len(value) > len(seen):
        added = b",".join([dump_json(item) for item in value[len(seen) :]])
        code = code[:-1] + (b"," if seen else b"") + added + b"]"
    fresh[where] = (list(value), code)
    return code


class ParsedFiles:
    """What write transactions last stored, by path, so the next reader and writer need not redo it.

    A long session is otherwise parsed by every read, and parsed and re-encoded whole
    by every append. An entry is used only while the file still holds exactly the bytes
    it was stored as (compared in full, which costs far less than parsing). It holds
    parsed copies of those bytes, each handed to one taker only (a reader owns what it
    reads, and TinyDB changes what a writer takes), so none is ever handed out twice:
    the copy the write itself stored, and one ``prepare`` parsed ahead of the next read.
    The encodings stay for the next writer, whatever copy it gets.
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[bytes, ListCodes, list[dict[str, Any]]]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, path: str, raw: bytes, writing: bool) -> tuple[dict[str, Any] | None, ListCodes] | None:
        """A parsed copy stored as ``raw`` (None when all are taken) and its encodings, or None if the file changed."""
        with self._lock:
            entry = self._entries.get(path)
            if entry is None or entry[0] != raw:
                return None
            if writing:
                del self._entries[path]
            return (entry[2].pop() if entry[2] else None), entry[1]

    def keep(self, path: str, raw: bytes, data: dict[str, Any], lists: ListCodes) -> None:
        with self._lock:
            self._entries[path] = (raw, lists, [data])
            self._entries.move_to_end(path)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def prepare(self, path: str) -> None:
        """Parse a second copy for the next reader, so that neither it nor the next writer waits for a parse.

        Does nothing unless the file still holds what this store last wrote there.
        """
        with self._lock:
            entry = self._entries.get(path)
            if entry is None or len(entry[2]) > 1:
                return
        raw = _read_bytes(path)
        if raw != entry[0]:
            return
        copy = _parse(path, raw)
        with self._lock:
            if self._entries.get(path) is entry:
                entry[2].insert(0, copy)


def _rebased(lists: ListCodes, data: dict[str, Any]) -> ListCodes:
    """Encodings kept for a file, pointed at ``data``: a fresh parse of the very bytes they encode."""
    rebased: ListCodes = {}
    for (table, doc_id, key), (seen, code) in lists.items():
        value = data.get(table, {}).get(doc_id, {}).get(key)
        if isinstance(value, list) and len(value) == len(seen):
            rebased[(table, doc_id, key)] = (list(value), code)
    return rebased


@functools.lru_cache(maxsize=64)
def _file_lock(lock_path: str) -> Any:
    """The lock object of ``lock_path``, built once: building a ``FileLock`` costs as much as taking it.

    Sharing it between threads is safe: its state is per thread (``thread_local``), and
    each thread takes the file lock on a descriptor of its own, so threads exclude each
    other as processes do.
    """
    from filelock import FileLock

    return FileLock(lock_path, mode=FILE_MODE, thread_local=True)


class LockedAtomicStorage(Storage):
    """TinyDB storage: one JSON file, atomically replaced, locked while the database is open.

    Open it with ``lock_path`` for a write transaction (``with TinyDB(..., storage=...)``)
    and without for a lock-free read: atomic replacement means a reader always sees a
    whole file. The parsed data is kept while the instance lives, which is safe because
    nobody else can write while we hold the lock. With ``parsed``, both kinds take a copy
    that an earlier write (or ``ParsedFiles.prepare``) left for them instead of parsing.
    """

    def __init__(
        self, path: str, lock_path: str | None = None, lock_timeout: float = 30.0, parsed: ParsedFiles | None = None
    ) -> None:
        self._path = path
        self._lock: Any = None  # a filelock.FileLock while writing
        self._data: dict[str, Any] | None = None
        self._lists: ListCodes = {}  # encodings of the lists in _data as the file holds them
        self._parsed = parsed
        if lock_path is not None:
            from filelock import (
                Timeout,  # imported on the first write: it costs start-up time
            )

            lock = _file_lock(lock_path)
            try:
                lock.acquire(timeout=lock_timeout)
            except Timeout:
                raise StoreBusy(path, lock_timeout) from None
            self._lock = lock

    def read(self) -> dict[str, Any] | None:
        if self._data is None:
            try:
                raw = _read_bytes(self._path)
            except FileNotFoundError:
                return None
            writing = self._lock is not None
            data, lists = (self._parsed.take(self._path, raw, writing) if self._parsed is not None else None) or (None, {})
            if data is None:
                data = _parse(self._path, raw)
            if not isinstance(data, dict):
                raise CorruptSession(self._path, "not a TinyDB document store")
            self._data, self._lists = data, _rebased(lists, data) if writing else {}
        return self._data

    def write(self, data: dict[str, Any]) -> None:
        if self._lock is None:
            raise RuntimeError("LockedAtomicStorage opened without a lock is read-only")
        lists: ListCodes = {}
        payload = dump_tables(data, self._lists, lists)
        try:
            atomic_write_bytes(self._path, payload)
        except BaseException:
            self._data, self._lists = None, {}  # TinyDB mutated our cached copy; the file is the truth
            raise
        self._data, self._lists = data, lists
        if self._parsed is not None:
            self._parsed.keep(self._path, payload, data, lists)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
