"""The embeddings of each session's messages, kept between turns and computed ahead of need.

The embedder (``context.embedder``) computes vectors and the store keeps their bytes
(``SessionManager.read_vectors``/``write_vectors``); this cache sits between them for
the client: it embeds only what is missing, within a time cap on a first turn, and
does the work that can wait on background threads: a finished turn's messages
(``update_later``) and the next prompt while its session is read (``embed_prompt_ahead``).
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
    """Per-session passage vectors on disk, embedded once and kept in memory between turns.

    ``vectors(session_id, messages)`` takes the conversation's messages (as the selector
    sees them: ``context.conversation_messages``) and returns a ``VectorTable`` with every
    message it could embed within ``max_seconds`` (all of them when None); the others
    are embedded on a later call, so a first turn on a long session is not held up.
    A message whose content changed since it was embedded is embedded again.

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
                table = self._checked(self._read(session_id), messages)
            known = table.rows
            missing = [m for m in messages if m.get("content") and m.get("id") is not None and m["id"] not in known]
            if missing:
                table = self._embed(table, missing, max_seconds)
            table = table.arranged([m.get("id") for m in messages])
            if session_id not in self._forgotten:
                if missing:
                    self.store.write_vectors(session_id, self.embedder.name, table.to_bytes())
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

    def _read(self, session_id: str) -> VectorTable:
        payload = self.store.read_vectors(session_id, self.embedder.name)
        try:
            return VectorTable.from_bytes(payload) if payload else VectorTable.empty()
        except (ValueError, KeyError, TypeError):  # unreadable: start over
            return VectorTable.empty()

    @staticmethod
    def _checked(table: VectorTable, messages: Sequence[Mapping[str, Any]]) -> VectorTable:
        """Drop vectors of messages whose content is no longer what was embedded."""
        current = {m.get("id"): digest(str(m.get("content") or "")) for m in messages}
        keep = [i for i, d in zip(table.ids, table.digests) if current.get(i) == d]
        return table if len(keep) == len(table.ids) else table.arranged(keep)

    def _embed(self, table: VectorTable, missing: list[Mapping[str, Any]], max_seconds: float | None) -> VectorTable:
        numpy = __import__("numpy")
        started = time.perf_counter()
        ids, digests, spans, blocks = list(table.ids), list(table.digests), list(table.spans), [table.matrix]
        start = len(table.matrix)
        for first in range(0, len(missing), BATCH):
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
            batch = missing[first : first + BATCH]
            pieces = [chunks(str(m["content"])) for m in batch]
            blocks.append(self.embedder.embed([piece for message in pieces for piece in message]))
            for message, message_pieces in zip(batch, pieces):
                ids.append(str(message["id"]))
                digests.append(digest(str(message["content"])))
                spans.append((start, start + len(message_pieces)))
                start += len(message_pieces)
        return VectorTable(ids, digests, spans, numpy.concatenate(blocks))

    def forget(self, session_id: str) -> None:
        """Stop keeping a session that is being deleted, once any embedding of it under way has been written.

        The store's ``delete_session``, called next, removes the file; from here on no
        background call of this cache writes it again.
        """
        with self._lock:
            self._forgotten.add(session_id)
            self._tables.pop(session_id, None)
