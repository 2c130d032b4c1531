"""The embeddings of each session's messages, kept between turns and computed ahead of need.

The embedder (``context.embedder``) computes vectors and the store keeps their bytes
(``SessionManager.read_vectors``/``write_vectors``), a message's passage vectors under a
digest of its content, so that every session holding that message shares them. This
cache sits between them for the client: it embeds only what neither it nor the store
has, within a time cap on a first turn, and does the work that can wait on background
threads: a finished turn's messages (``update_later``) and the next prompt while its
session is read (``embed_prompt_ahead``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .context.embedder import BATCH, Embedder, VectorTable, digest
from .context.relevance import chunks

if TYPE_CHECKING:
    from .store.sessions import SessionManager

_HANDOFF_SECONDS = 0.01  # how long a prompt's embedding may take to start before the caller goes on anyway


class VectorCache:
    """Per-session passage vectors, embedded once per message content and kept in memory between turns.

    ``vectors(session_id, messages)`` takes the conversation's messages (as the selector
    sees them: ``context.conversation_messages``) and returns a ``VectorTable`` with every
    message the store had vectors of or that could be embedded within ``max_seconds``
    (all of them when None); the others are embedded on a later call, so a first turn on
    a long session is not held up. The store is asked by content, so a copied or
    imported session finds what any session embedded, and a message whose content
    changed since it was embedded is embedded again.

    Work that can wait runs on background threads: a finished turn's messages
    (``update_later``), and the next prompt while its session is read and the rest of
    the plan is made (``embed_prompt_ahead``), on a thread of its own so that it never
    queues behind a batch.
    """

    def __init__(self, store: SessionManager, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder
        self._tables: dict[str, VectorTable] = {}
        self._forgotten: set[str] = set()  # deleted sessions: a late background call must not write them again
        self._lock = threading.Lock()
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblix-embed")
        self._prompts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblix-embed-prompt")
        self._prompt_ahead: tuple[str, dict[str, Any], Future[Any]] | None = None  # prompt, its inputs, the run

    def keeps(self, session_id: str) -> bool:
        """Whether this session's vectors are in use here, so its new messages are worth embedding ahead."""
        return session_id in self._tables

    def update_later(self, session_id: str, messages: Sequence[Mapping[str, Any]]) -> None:
        """``vectors`` in the background, so the next turn finds these messages embedded.

        A failure here is not reported: the next ``vectors`` call embeds what is missing.
        """
        self._background.submit(self.vectors, session_id, messages)

    def vectors(self, session_id: str, messages: Sequence[Mapping[str, Any]], max_seconds: float | None = None) -> VectorTable:
        with self._lock:
            table = self._tables.get(session_id)
            if table is None:
                table = VectorTable.empty()
            known = table.rows
            missing = [m for m in messages if m.get("content") and m.get("id") is not None and m["id"] not in known]
            entries: dict[str, bytes | None] = {}
            if missing:
                table, entries = self._add(table, missing, max_seconds)
            table = table.arranged([m.get("id") for m in messages])
            if session_id not in self._forgotten:
                if entries:
                    self.store.write_vectors(self.embedder.name, session_id, entries)
                self._tables[session_id] = table
            return table

    def embed_prompt_ahead(self, prompt: str) -> None:
        """Start embedding ``prompt`` in the background; ``embed_prompt`` picks the result up.

        Measured (paired, 1,000 messages, overflowing a 4k window): 5 ms a turn after a
        300 ms first token, 18 ms for a typical answer.

        A worker woken while this thread keeps computing would wait for the interpreter
        lock until this thread next blocks, typically when it asks for the result, and the
        embedding would then run after the plan instead of beside it. So the prompt is
        tokenized here, and this waits (briefly, bounded) for the worker to start: from
        there it needs the lock only to enter onnxruntime, which runs without it.
        """
        feeds = self.embedder.feeds([prompt])
        started = threading.Event()

        def run() -> Any:
            started.set()
            return self.embedder.run(feeds)

        self._prompt_ahead = (prompt, feeds, self._prompts.submit(run))
        started.wait(_HANDOFF_SECONDS)

    def embed_prompt(self, prompt: str) -> Any:
        ahead, self._prompt_ahead = self._prompt_ahead, None
        if ahead is not None and ahead[0] == prompt:
            return self.embedder.pooled(ahead[2].result(), ahead[1])[0]
        return self.embedder.embed([prompt])[0]

    def _add(
        self, table: VectorTable, missing: list[Mapping[str, Any]], max_seconds: float | None
    ) -> tuple[VectorTable, dict[str, bytes | None]]:
        """``table`` with the ``missing`` messages the store has or that are embedded in time, and what to store.

        What to store maps each added message's digest to its new payload (float16
        passage rows), or to None when the store had it and only this session's use
        of it is new.
        """
        numpy = __import__("numpy")
        started = time.perf_counter()
        width = table.matrix.shape[1]
        keys = [digest(str(m["content"])) for m in missing]
        found = self.store.read_vectors(self.embedder.name, keys)
        usable = [key for key, payload in found.items() if payload and len(payload) % (2 * width) == 0]  # else embed again
        rows = numpy.frombuffer(b"".join(found[key] for key in usable), dtype=numpy.float16).astype(numpy.float32)
        rows = rows.reshape(-1, width)  # at once, not message by message: 4 ms instead of 10 for 1,000 messages
        blocks: dict[str, Any] = {}
        for key in usable:
            count = len(found[key]) // (2 * width)
            blocks[key], rows = rows[:count], rows[count:]
        entries: dict[str, bytes | None] = dict.fromkeys(blocks)
        unknown = list({key: m for m, key in zip(missing, keys) if key not in blocks}.items())  # same content: once
        for first in range(0, len(unknown), BATCH):
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
            batch = unknown[first : first + BATCH]
            pieces = [chunks(str(m["content"])) for _, m in batch]
            vectors = self.embedder.embed([piece for message in pieces for piece in message])
            end = 0
            for (key, _), message_pieces in zip(batch, pieces):
                blocks[key] = vectors[end : end + len(message_pieces)]
                entries[key] = blocks[key].astype(numpy.float16).tobytes()
                end += len(message_pieces)
        ids, digests, spans, matrices = list(table.ids), list(table.digests), list(table.spans), [table.matrix]
        start = len(table.matrix)
        for message, key in zip(missing, keys):
            if key in blocks:
                ids.append(str(message["id"]))
                digests.append(key)
                spans.append((start, start + len(blocks[key])))
                matrices.append(blocks[key])
                start += len(blocks[key])
        return VectorTable(ids, digests, spans, numpy.concatenate(matrices)), entries

    def forget(self, session_id: str) -> None:
        """Stop keeping a session that is being deleted, once any embedding of it under way has been written.

        The store's ``delete_session``, called next, removes its vectors; from here on no
        background call of this cache records them again.
        """
        with self._lock:
            self._forgotten.add(session_id)
            self._tables.pop(session_id, None)
