"""What this process last wrote to each session file, kept so the next read and write need not redo it.

Encoding a long session whole on every append, and parsing it again on every read, is
most of a turn's store work, and it grows with the session, while a turn's whole budget
over a bare model call is 5% (measured: see benchmarks/bench_turn.py and README's
"Speed"). Everything here is an optimisation: with none of it, the same bytes are
written and read.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from typing import Any

from .files import dump_json, parse_json, read_bytes

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
        raw = read_bytes(path)
        if raw != entry[0]:
            return
        copy = parse_json(path, raw)
        with self._lock:
            if self._entries.get(path) is entry:
                entry[2].insert(0, copy)


def rebased(lists: ListCodes, data: dict[str, Any]) -> ListCodes:
    """Encodings kept for a file, pointed at ``data``: a fresh parse of the very bytes they encode."""
    rebased: ListCodes = {}
    for (table, doc_id, key), (seen, code) in lists.items():
        value = data.get(table, {}).get(doc_id, {}).get(key)
        if isinstance(value, list) and len(value) == len(seen):
            rebased[(table, doc_id, key)] = (list(value), code)
    return rebased
