"""The TinyDB storage every session file goes through: one transaction per open, atomic replacement.

Several kernels, a chat panel and the command line may write the same session at
once, and any of them may be killed mid-write. TinyDB's stock ``JSONStorage``
rewrites the file in place, so a kill leaves half a file and two writers lose each
other's changes. This storage fixes both at the one place every write passes:
it holds an exclusive per-file lock for the lifetime of the TinyDB instance (so a
read-modify-write is one transaction) and replaces the file atomically.
"""

from __future__ import annotations

import functools
from typing import Any

from tinydb.storages import Storage

from ..errors import CorruptSession, StoreBusy
from .files import FILE_MODE, atomic_write_bytes, parse_json, read_bytes
from .written import ListCodes, ParsedFiles, dump_tables, rebased


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
                raw = read_bytes(self._path)
            except FileNotFoundError:
                return None
            writing = self._lock is not None
            data, lists = (self._parsed.take(self._path, raw, writing) if self._parsed is not None else None) or (None, {})
            if data is None:
                data = parse_json(self._path, raw)
            if not isinstance(data, dict):
                raise CorruptSession(self._path, "not a TinyDB document store")
            self._data, self._lists = data, rebased(lists, data) if writing else {}
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
