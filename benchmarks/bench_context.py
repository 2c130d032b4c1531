"""Context selection: does the message holding the answer reach the model, and how fast is choosing?

Retrieval: on the generated evaluation set (``context_eval``: 6 notebook conversations of
300-420 messages, 60 facts planted early and asked for at the end in other words), the
share of questions whose fact-holding message was sent, key included, at a 2,000-token
budget: for recency alone, BM25 alone, embeddings alone, their reciprocal-rank fusion,
and the selector (with and without embeddings).

Speed: one turn's selection on a 10,000-message session with 20 variables in scope,
with token counts, vectors and the word index cached (as from the second turn on); the
prompt's embedding; and the first turn, when nothing is cached yet.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from common import CachedCount, median_ms, report
from context_eval.generate import Question, conversations

from oblix_jupyter.context.relevance import (
    LexicalIndex,
    chunks,
    query_terms,
    semantic_scores,
)
from oblix_jupyter.context.selector import (
    MESSAGE_OVERHEAD,
    conversation_messages,
    select_context,
)
from oblix_jupyter.kernel.variables import summarize_variables

MODEL = "openai/gpt-4o-mini"
BUDGET = 2000
CACHE = pathlib.Path(__file__).parent / "context_eval" / ".cache"  # embedded eval messages, reused between runs


def ranked_fill(messages: list[dict[str, Any]], order: Sequence[int], prompt: str, count: Callable[[str], int], stop_early: bool) -> set[str]:
    """What a single-signal selector sends: messages in ``order`` while they fit (recency stops at the first misfit)."""
    room = BUDGET - count(prompt) - MESSAGE_OVERHEAD - 40  # the omission note of the system message
    sent: set[str] = set()
    for position in order:
        tokens = count(messages[position]["content"]) + MESSAGE_OVERHEAD
        if tokens > room:
            if stop_early:
                break
            continue
        sent.add(messages[position]["id"])
        room -= tokens
    return sent


def by_message(index: LexicalIndex, passage_scores: Any) -> list[float]:
    """A message's score is that of its best passage (0 when it has none)."""
    scores = []
    for first, end in index.spans:
        values = [passage_scores[c] for c in range(first, end) if passage_scores[c] is not None and passage_scores[c] == passage_scores[c]]
        scores.append(max(values, default=0.0))
    return scores


def retrieval(cache: Any) -> None:
    count = CachedCount(MODEL)
    results: dict[str, list[bool]] = {}
    for session, questions in conversations():
        messages = session["messages"]
        index = LexicalIndex(messages)
        vectors = cache.vectors(session["id"], messages) if cache else None
        for question in questions:
            prompt = question.question
            prompt_vector = cache.embed_prompt(prompt) if cache else None
            lexical_passages = index.scores(query_terms(prompt))
            lexical = by_message(index, [lexical_passages.get(c, 0.0) for c in range(len(index.texts))])
            by_words = sorted((p for p in range(len(messages)) if lexical[p] > 0), key=lambda p: -lexical[p])
            newest_first = list(range(len(messages) - 1, -1, -1))
            strategies: dict[str, Any] = {
                "recency only": ranked_fill(messages, newest_first, prompt, count, stop_early=True),
                "BM25 only": ranked_fill(messages, by_words, prompt, count, False),
            }
            if cache:
                cosine = by_message(index, semantic_scores(prompt_vector, vectors, index))
                by_meaning = sorted(range(len(messages)), key=lambda p: -cosine[p])
                strategies["embeddings only"] = ranked_fill(messages, by_meaning, prompt, count, False)
                rank = {p: r for r, p in enumerate(by_words)}
                fused = {p: 1 / (60 + rank.get(p, len(messages))) + 1 / (60 + r) for r, p in enumerate(by_meaning)}
                strategies["BM25 + embeddings, reciprocal rank fusion"] = ranked_fill(
                    messages, sorted(fused, key=fused.__getitem__, reverse=True), prompt, count, False
                )
            plans = {"selector, words only (no [semantic] extra)": select_context(session, prompt, BUDGET, count, lexical_index=index)}
            if cache:
                plans["selector"] = select_context(
                    session, prompt, BUDGET, count, lexical_index=index, vectors=(vectors, prompt_vector)
                )
            for name, sent in strategies.items():
                results.setdefault(name, []).append(question.message_id in sent)
            for name, plan in plans.items():
                assert plan.used <= BUDGET
                results.setdefault(name, []).append(answer_sent(plan, question))
    total = len(next(iter(results.values())))
    for name, hits in results.items():
        goal = "goal >= 85%" if name == "selector" else ""
        report(f"answer sent at {BUDGET} tokens: {name}", f"{100 * sum(hits) / total:.0f}% of {total}", goal)


def answer_sent(plan: Any, question: Question) -> bool:
    """The fact's message is in the plan, and the part of it holding the answer was not cut away."""
    for item, message in zip([i for i in plan.items if not i.in_system], plan.messages):
        if item.message_id == question.message_id:
            return question.key.lower() in message["content"].lower()
    return False


def long_session(size: int) -> dict[str, Any]:
    """``size`` messages made of the evaluation conversations, repeated with fresh ids."""
    messages: list[dict[str, Any]] = []
    while len(messages) < size:
        for session, _ in conversations(seed=len(messages)):
            for message in session["messages"]:
                messages.append({**message, "id": f"msg_{len(messages) + 1}"})
    return {"id": "00000000-0000-4000-8000-00000000be4c", "context": {"project": "bench"}, "messages": messages[:size]}


def twenty_variables() -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"store_id": range(1000), "units": np.arange(1000) % 17, "region": ["north", "south"] * 500})
    namespace: dict[str, Any] = {f"frame_{n}": frame for n in range(5)}
    namespace.update({f"array_{n}": np.linspace(0, n + 1, 10_000) for n in range(5)})
    namespace.update({f"settings_{n}": {"alpha": n, "features": ["a", "b", "c"], "path": "/data/x.csv"} for n in range(5)})
    namespace.update({f"helper_{n}": (lambda x, y=2: x + y) for n in range(5)})
    return namespace


def speed(cache_dir: str, embedder: Any) -> None:
    import numpy as np

    from oblix_jupyter.context.embedder import VectorTable
    from oblix_jupyter.context.expansion import WordTable, vocabulary
    from oblix_jupyter.sessions import SessionManager
    from oblix_jupyter.context.vector_cache import PROMPT_WORDS, VectorCache

    session = long_session(10_000)
    messages = conversation_messages(session)
    namespace = twenty_variables()
    prompt = "Why is " + ", ".join(f"`{name}`" for name in namespace) + " so slow to plot by store_id and units?"
    count = CachedCount(MODEL)

    # First turn: no token counts, no word index, no vectors yet (embedding capped at 2 s; the rest comes later).
    cache = VectorCache(SessionManager(cache_dir), embedder) if embedder else None
    with cache.during_turn() if cache else nullcontext():  # as the client marks a turn: the background waits
        started = time.perf_counter()
        variables = summarize_variables(namespace, prompt, count=count)
        index = LexicalIndex(messages)
        first_vectors = cache.vectors(session["id"], messages, max_seconds=2.0) if cache else None
        prompt_vector = cache.embed_prompt(prompt) if cache else None
        plan = select_context(
            session, prompt, BUDGET, count, variables=variables, lexical_index=index, vectors=(first_vectors, prompt_vector)
        )
        first_turn = time.perf_counter() - started
    assert plan.used <= BUDGET and len(variables) == 20, (plan.used, len(variables))
    if cache:
        cache.forget(session["id"])  # the first turn left the rest to the background: it would compete with what follows
        cache.wait()

    vectors = words = None
    if cache:
        # Later turns have every passage and word embedded; selection time does not depend on the vectors' values.
        rows = np.random.default_rng(0).standard_normal((len(index.texts), 384)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        vectors = VectorTable([str(m["id"]) for m in messages], [""] * len(messages), list(index.spans), rows)
        vocabulary_of = list(vocabulary(m["content"] for m in messages))
        word_rows = np.random.default_rng(1).standard_normal((len(vocabulary_of), 384)).astype(np.float32)
        words = WordTable.of(vocabulary_of, word_rows / np.linalg.norm(word_rows, axis=1, keepdims=True))
        words.prepare()
        prompt_ms = median_ms(lambda: cache.embed_prompt(prompt), repeat=10)
        lacking = words.lacking(prompt)[:PROMPT_WORDS]  # the variables' names: words no message wrote
        lacking_ms = median_ms(lambda: embedder.embed(lacking), repeat=10)
        most_ms = median_ms(lambda: embedder.embed(vocabulary_of[:PROMPT_WORDS]), repeat=10)  # the most embedded so
        sample = messages[:200]
        started = time.perf_counter()
        embedder.embed([piece for m in sample for piece in chunks(m["content"])])
        per_message = (time.perf_counter() - started) / len(sample)
    warm_ms = median_ms(
        lambda: select_context(
            session, prompt, BUDGET, count, variables=variables, lexical_index=index, vectors=(vectors, prompt_vector), words=words
        ),
        repeat=20,
    )
    summarize_ms = median_ms(lambda: summarize_variables(namespace, prompt, count=count), repeat=5, warmup=1)
    report("select_context, 10,000 messages, 20 variables, all cached", f"{warm_ms:.1f} ms", "goal <= 20 ms")
    if words is not None:
        report(f"  of which widening the prompt's words among the {len(words):,} of the conversation", f"{median_ms(lambda: words.widen(prompt, {}), repeat=20):.1f} ms")
        many = [*words.vectors.ids, *(f"filler{n}" for n in range(20_000 - len(words)))]  # a long real session's vocabulary
        many_rows = np.random.default_rng(2).standard_normal((len(many), 384)).astype(np.float32)
        large = WordTable.of(many, many_rows / np.linalg.norm(many_rows, axis=1, keepdims=True))
        large.prepare()
        report("  the same among 20,000 words", f"{median_ms(lambda: large.widen(prompt, {}), repeat=20):.1f} ms")
    report("  summarize_variables for the 20 variables", f"{summarize_ms:.1f} ms")
    if cache:
        report("  the prompt's embedding", f"{prompt_ms:.1f} ms")
        report(f"  then its {len(lacking)} words the conversation lacks, in a batch of their own", f"{lacking_ms:.1f} ms")
        report(f"  (a prompt of {PROMPT_WORDS} or more such words: the first {PROMPT_WORDS})", f"{most_ms:.1f} ms")
        report("first turn, nothing cached (counts, index, embedding if it fits 2 s)", f"{first_turn:.1f} s")
        report("  embedding all 10,000 messages once (from 200 timed)", f"{per_message * 10_000:.0f} s", f"{1 / per_message:.0f} msg/s")
    else:
        report("first turn, nothing cached (counts, word index)", f"{first_turn:.1f} s")


def main() -> None:
    from oblix_jupyter.context.embedder import load_embedder, unavailable_reason
    from oblix_jupyter.sessions import SessionManager
    from oblix_jupyter.context.vector_cache import VectorCache

    started = time.perf_counter()
    embedder = load_embedder()
    load_s = time.perf_counter() - started
    if embedder is None:
        print(f"(no embeddings: {unavailable_reason()})")
    else:
        report("embedding model: import and load", f"{load_s:.2f} s")
    CACHE.mkdir(exist_ok=True)
    retrieval(VectorCache(SessionManager(CACHE), embedder) if embedder else None)
    with tempfile.TemporaryDirectory() as base:
        speed(os.path.join(base, "store"), embedder)


if __name__ == "__main__":
    main()
