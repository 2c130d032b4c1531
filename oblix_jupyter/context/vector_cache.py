"""The embeddings of each session's messages, kept between turns and computed ahead of need.

The embedder (``embedder.py``) computes vectors and a ``VectorBytes`` keeps their bytes
(the session store's ``read_vectors``/``write_vectors``), a message's passage vectors
under a digest of its content, so that every session holding that message shares them.
This cache sits between them for the turn: it embeds only what neither it nor the store
has, within a time cap on a first turn, and does the work that can wait on background
threads: a finished turn's messages (``update_later``) and the next prompt while its
session is read (``embed_prompt_ahead``). After a session's messages, the background
embeds its words, each alone (``expansion.WordTable``, which ``words`` gives a turn):
never on a turn's path, so the first turns of a session go without them. The few words
of a prompt that its session's table lacks are embedded with the prompt. It names the
two byte methods it needs as a protocol, so the selector's package knows nothing of the store.

The background embeds only while no turn is under way, but the words of a session new
to this kernel it reads from the store at once (``_fill_words``): turns that follow one
another with no pause between them (a benchmark, a script) would otherwise never get
the words of a session embedded before. Reading a 680-turn LoCoMo session's 1,793 words
took 8-15 ms here, once per session and kernel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

from .embedder import BATCH, Embedder, VectorTable, digest, load_embedder
from .expansion import WordTable, vocabulary
from .relevance import chunks

_HANDOFF_SECONDS = 0.01  # how long a prompt's embedding may take to start before the caller goes on anyway
_FIRST_RATE = 100.0  # passages per second assumed until measured: a busy 2-core machine's, so a first turn waits no longer than asked
_BACKGROUND_BATCH = 8  # messages per background batch: the longest a turn that starts meanwhile waits
PROMPT_WORDS = 32  # a prompt's words embedded beside it at most (the first ones the session lacks): one batch
# A prompt's lacking words go into its own run when (1 + their number) × its word pieces are at most this:
# a second run then costs more than the padding (measured on this 2-core machine: a 9-piece prompt with 1 word
# 3.5 ms in one run, 4.3 in two; 32 pieces with 3 words 11.9 against 8.5).
_SHARED_RUN = 48
_WORD_BATCH = 64  # words per background batch: about 40 ms at the 1,750 words a second of a quiet 2-core machine
# A front end still renders the answer after the turn: background work starting at once
# competes with it for the interpreter lock, so it waits this long after a turn
# (measured: see benchmarks/bench_magics.py and README's "Speed").
_AFTER_TURN = 0.1


class VectorBytes(Protocol):
    """Where the cache keeps vector bytes between processes: every session store is one."""

    def read_vectors(self, model: str, keys: Iterable[str]) -> dict[str, bytes]:
        """The payloads kept for those content keys (the ones it has)."""

    def write_vectors(self, model: str, session_id: str, entries: Mapping[str, bytes | None]) -> None:
        """Keep payloads under content keys as used by ``session_id`` (None: already kept, only the use is new)."""


class VectorCache:
    """Per-session passage vectors, embedded once per message content and kept in memory between turns.

    ``vectors(session_id, messages)`` takes the conversation's messages (as the selector
    sees them: ``context.conversation_messages``) and returns a ``VectorTable`` with every
    message the store had vectors of, plus the rest when embedding them is expected to
    take at most ``max_seconds`` (always when None). Otherwise the rest is left to the
    background and the turn goes on with what there is (the selector then judges by
    words alone if too little is embedded): a first turn on a long session that nothing
    was computed for is not held up. The store is asked by content, so a copied or
    imported session finds what any session embedded.

    Work that can wait runs on background threads: embedding what a turn stored or left
    (``update_later``), in small batches that wait while a turn is under way
    (``during_turn``), and the next prompt while its session is read and the rest of the
    plan is made (``embed_prompt_ahead``), on a thread of its own so that it never
    queues behind a batch. The embedder is loaded on first use, so creating a cache
    costs nothing and a background call loads it off the turn's path.
    """

    def __init__(self, store: VectorBytes, embedder: Embedder | None = None) -> None:
        self.store = store
        self._embedder = embedder
        self._tables: dict[str, VectorTable] = {}
        self._word_vectors: dict[str, VectorTable] = {}  # each session's words, as one-word messages
        self._words: dict[str, WordTable] = {}  # the last complete ones, for turns (``words``)
        self._vocabularies: dict[str, tuple[int, Any, dict[str, None]]] = {}  # messages read, the last one's id, words
        self._used: set[str] = set()  # sessions a turn asked for vectors (``keeps``)
        self._forgotten: set[str] = set()  # deleted sessions: a late background call must not write them again
        self._lock = threading.Lock()
        self._turns = 0  # turns under way: background batches wait for none
        self._turn_ended = 0.0  # when the last one ended (time.monotonic)
        self._quiet = threading.Condition()
        self._rate = _FIRST_RATE  # passages embedded per second, as last measured here
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblix-embed")
        self._prompts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblix-embed-prompt")
        # The prompt, its words the session lacks, their inputs (the words' own if not in the prompt's run), the run:
        self._prompt_ahead: tuple[str, list[str], dict[str, Any], dict[str, Any] | None, Future[Any]] | None = None
        self._unwritten: dict[str, Any] = {}  # the vectors of the last prompt's words, from that run (``words``)

    @property
    def embedder(self) -> Embedder | None:
        """The embedding model, loaded on first use; None when it cannot be (``embedder.unavailable_reason``)."""
        if self._embedder is None:
            self._embedder = load_embedder()
        return self._embedder

    def keeps(self, session_id: str) -> bool:
        """Whether a turn has used this session's vectors here, so its next prompt is worth embedding ahead.

        Not merely whether they are kept: a session that fits its window needs no
        prompt vector, and embedding one anyway takes CPU from each of its turns for
        nothing (measured: see benchmarks/bench_magics.py and README's "Speed").
        """
        return session_id in self._used

    @contextmanager
    def during_turn(self) -> Iterator[None]:
        """Mark a turn under way: background embedding pauses between its batches until it ends."""
        with self._quiet:
            self._turns += 1
        try:
            yield
        finally:
            with self._quiet:
                self._turns -= 1
                self._turn_ended = time.monotonic()
                self._quiet.notify_all()

    @contextmanager
    def aside(self) -> Iterator[None]:
        """A turn waiting for its user (an approval, maybe for hours) is not under way meanwhile: background embedding goes on."""
        with self._quiet:
            self._turns -= 1
            self._turn_ended = time.monotonic()
            self._quiet.notify_all()
        try:
            yield
        finally:
            with self._quiet:
                self._turns += 1

    def update_later(self, session_id: str, messages: Sequence[Mapping[str, Any]]) -> None:
        """Embed in the background whatever of ``messages`` has no vector yet, so that the next turn finds it.

        A failure here is not reported: the next ``vectors`` call embeds what is missing.
        """
        self._background.submit(self._fill, session_id, list(messages))

    def vectors(self, session_id: str, messages: Sequence[Mapping[str, Any]], max_seconds: float | None = None) -> VectorTable:
        """The session's passage vectors for a turn (see the class); what is left, and its words, to the background.

        A session's first turn here always asks the background for its words, even when
        every passage was found: a session embedded before (in another kernel, or by a
        plan alone) has its words in the store, or not yet embedded at all.
        """
        first = session_id not in self._used
        self._used.add(session_id)
        table, complete = self._update(session_id, messages, max_seconds)
        if first or not complete:
            self.update_later(session_id, messages)
        return table

    def words(self, session_id: str, prompt: str | None = None) -> WordTable | None:
        """The session's words with their vectors, as far as the background has embedded them (None before it has).

        With ``prompt``: for that prompt, with vectors of (the first ``PROMPT_WORDS`` of)
        its words the table lacks, those ``embed_prompt_ahead`` embedded (``embed_prompt``
        picked them up) or, failing that, now.
        """
        table = self._words.get(session_id)
        lacking = table.lacking(prompt)[:PROMPT_WORDS] if table is not None and prompt is not None else []
        found, self._unwritten = self._unwritten, {}
        embedder = self.embedder
        if table is None or not lacking or embedder is None:
            return table
        rest = [word for word in lacking if word not in found]
        if rest:
            found = {**found, **dict(zip(rest, embedder.embed(rest)))}
        return table.with_unwritten({word: found[word] for word in lacking})

    def wait(self) -> None:
        """Wait until the background embedding asked for so far is done (benchmarks, tests)."""
        self._background.submit(lambda: None).result()

    def _update(
        self,
        session_id: str,
        messages: Sequence[Mapping[str, Any]],
        max_seconds: float | None,
        limit: int | None = None,
        tables: dict[str, VectorTable] | None = None,
    ) -> tuple[VectorTable, bool]:
        """The session's table with what the store has, and what is embedded now; whether every message is in it.

        Only the first ``limit`` messages without a vector here are looked up and, if the
        store has none for them, embedded now: none unless that is expected to take at
        most ``max_seconds`` (None: no limit). ``tables``: where the session's table is
        kept (its messages', unless its words' are meant).
        """
        tables = self._tables if tables is None else tables
        with self._lock:
            table = tables.get(session_id) or VectorTable.empty()
            embeddable = [m for m in messages if m.get("content") and m.get("id") is not None]
            ids = [m["id"] for m in embeddable]
            if ids == table.ids:
                return table, True  # the usual turn: the background embedded everything already
            missing = [m for m in embeddable if m["id"] not in table.rows][:limit]
            entries: dict[str, bytes | None] = {}
            embedder = self.embedder if missing else None  # nothing to look up (``_fill``'s first look): the model need not load
            if embedder is not None:
                table, entries = self._add(embedder, table, missing, max_seconds)
            table = table.arranged(ids)
            table.prepare()  # here, often in the background, rather than in the next turn's ranking
            if session_id not in self._forgotten:
                if entries and embedder is not None:
                    self.store.write_vectors(embedder.name, session_id, entries)
                tables[session_id] = table
            return table, len(table) == len(embeddable)

    def _wait_for_quiet(self) -> None:
        """Until no turn is under way and the last ended ``_AFTER_TURN`` ago (its front end is still showing it)."""
        with self._quiet:
            while True:
                self._quiet.wait_for(lambda: self._turns == 0)
                left = self._turn_ended + _AFTER_TURN - time.monotonic()
                if left <= 0:
                    return
                self._quiet.wait(left)

    def _fill(self, session_id: str, messages: list[Mapping[str, Any]]) -> None:
        """Background: embed what is missing ``_BACKGROUND_BATCH`` messages at a time, never while a turn is under way; then the words.

        A batch already running when a turn starts finishes first, which is why batches
        are small (measured: see benchmarks/bench_background.py). Each batch is stored as
        soon as it is done.
        """
        _, complete = self._update(session_id, messages, None, limit=0)  # complete already (a turn found it all)? Then no wait
        while not complete and session_id not in self._forgotten and self.embedder is not None:
            self._wait_for_quiet()
            _, complete = self._update(session_id, messages, None, limit=_BACKGROUND_BATCH)
        if complete:
            self._fill_words(session_id, messages)

    def _fill_words(self, session_id: str, messages: list[Mapping[str, Any]]) -> None:
        """Background: the session's words not embedded yet, ``_WORD_BATCH`` at a time, never while a turn is under way; then the turns' table.

        Each word is kept as a one-word message would be (under a digest of it), so a
        word met in any session is embedded once, and goes with the sessions that use it.
        The words of a session new to this kernel are read from the store at once, turn
        or not: it may hold them all (the session was used before), and reading is quick.
        Not before a turn loaded the model, which waits for a quiet moment as embedding does.
        """
        words = [{"id": word, "content": word} for word in self._vocabulary(session_id, messages)]
        table, complete = VectorTable.empty(), False
        if session_id not in self._words and self._embedder is not None:  # new here, after a turn that loaded the model
            table, complete = self._update(session_id, words, 0.0, tables=self._word_vectors)  # the store's, at once
        while not complete and session_id not in self._forgotten and self.embedder is not None:
            self._wait_for_quiet()
            table, complete = self._update(session_id, words, None, limit=_WORD_BATCH, tables=self._word_vectors)
        current = self._words.get(session_id)
        if complete and (current is None or len(current) != len(table)):
            ready = WordTable(table)
            ready.prepare()
            with self._lock:
                if session_id not in self._forgotten:
                    self._words[session_id] = ready

    def _vocabulary(self, session_id: str, messages: Sequence[Mapping[str, Any]]) -> list[str]:
        """The session's words in the order first written, reading only the messages added since the last call."""
        read, last, found = self._vocabularies.get(session_id, (0, None, {}))
        if read > len(messages) or (read and messages[read - 1].get("id") != last):
            read, found = 0, {}  # not the same conversation grown at its end: read it all again
        vocabulary((str(message.get("content") or "") for message in messages[read:]), into=found)
        self._vocabularies[session_id] = (len(messages), messages[-1].get("id") if messages else None, found)
        return list(found)

    def embed_prompt_ahead(self, prompt: str, session_id: str | None = None) -> None:
        """Start embedding ``prompt`` in the background; ``embed_prompt`` picks the result up.

        So the prompt's embedding runs beside the session's reading and the rest of the
        plan, not after them (measured: see benchmarks/bench_turn.py and README's "Speed").
        The prompt's words that ``session_id``'s word table lacks are embedded with it,
        for ``words``.

        A worker woken while this thread keeps computing would wait for the interpreter
        lock until this thread next blocks, typically when it asks for the result, and the
        embedding would then run after the plan instead of beside it. So the prompt is
        tokenized here, and this waits (briefly, bounded) for the worker to start: from
        there it needs the lock only to enter onnxruntime, which runs without it. For the
        same reason the words go into the prompt's own run when padding them to its length
        costs little (``_SHARED_RUN``): a second run waits for the lock between the two.
        """
        embedder = self.embedder
        if embedder is None:
            return
        table = self._words.get(session_id) if session_id is not None else None
        lacking = table.lacking(prompt)[:PROMPT_WORDS] if table is not None else []
        feeds = embedder.feeds([prompt])
        word_feeds = None
        if lacking:
            if (1 + len(lacking)) * feeds["input_ids"].shape[1] <= _SHARED_RUN:
                feeds = embedder.feeds([prompt, *lacking])
            else:  # a long prompt: one-word inputs pad to a few pieces in a run of their own, not to its length
                word_feeds = embedder.feeds(lacking)
        started = threading.Event()

        def run() -> tuple[Any, Any]:
            started.set()
            return embedder.run(feeds), None if word_feeds is None else embedder.run(word_feeds)

        self._prompt_ahead = (prompt, lacking, feeds, word_feeds, self._prompts.submit(run))
        started.wait(_HANDOFF_SECONDS)

    def embed_prompt(self, prompt: str) -> Any:
        """The prompt's vector (the one ``embed_prompt_ahead`` started, if it was this prompt); None without an embedder."""
        ahead, self._prompt_ahead = self._prompt_ahead, None
        embedder = self.embedder
        if embedder is None:
            return None
        if ahead is None or ahead[0] != prompt:
            return embedder.embed([prompt])[0]
        _, lacking, feeds, word_feeds, future = ahead
        hidden, word_hidden = future.result()
        vectors = embedder.pooled(hidden, feeds)
        words = vectors[1:] if word_feeds is None else embedder.pooled(word_hidden, word_feeds)
        self._unwritten = dict(zip(lacking, words))
        return vectors[0]

    def _add(
        self, embedder: Embedder, table: VectorTable, missing: list[Mapping[str, Any]], max_seconds: float | None
    ) -> tuple[VectorTable, dict[str, bytes | None]]:
        """``table`` with the ``missing`` messages the store has or that are embedded now (see ``_update``), and what to store.

        What to store maps each added message's digest to its new payload (float16
        passage rows), or to None when the store had it and only this session's use
        of it is new.
        """
        numpy = __import__("numpy")
        started = time.perf_counter()
        width = table.matrix.shape[1]
        keys = [digest(str(m["content"])) for m in missing]
        found = self.store.read_vectors(embedder.name, keys)
        usable = [key for key, payload in found.items() if payload and len(payload) % (2 * width) == 0]  # else embed again
        rows = numpy.frombuffer(b"".join(found[key] for key in usable), dtype=numpy.float16).astype(numpy.float32)
        rows = rows.reshape(-1, width)  # at once, not message by message: one conversion, not one per message
        blocks: dict[str, Any] = {}
        for key in usable:
            count = len(found[key]) // (2 * width)
            blocks[key], rows = rows[:count], rows[count:]
        entries: dict[str, bytes | None] = dict.fromkeys(blocks)
        unknown = list({key: m for m, key in zip(missing, keys) if key not in blocks}.items())  # same content: once
        if max_seconds == 0:
            unknown = []  # what the store has, and nothing embedded (not even cut into passages)
        pieces = [chunks(str(m["content"])) for _, m in unknown]
        if max_seconds is not None and sum(map(len, pieces)) > max_seconds * self._rate:
            unknown = []  # more than the time allows: all of it in the background instead
        for first in range(0, len(unknown), BATCH):
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
            batch, batch_pieces = unknown[first : first + BATCH], pieces[first : first + BATCH]
            began = time.perf_counter()
            vectors = embedder.embed([piece for message in batch_pieces for piece in message])
            self._rate = len(vectors) / max(time.perf_counter() - began, 1e-6)
            end = 0
            for (key, _), message_pieces in zip(batch, batch_pieces):
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
            self._word_vectors.pop(session_id, None)
            self._words.pop(session_id, None)
            self._vocabularies.pop(session_id, None)
            self._used.discard(session_id)
