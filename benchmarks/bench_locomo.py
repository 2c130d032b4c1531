"""LoCoMo: does the turn holding an answer reach the model? The selector against simple baselines.

Each LoCoMo conversation (``locomo.py``; read from ``../shared/evals/locomo-dev``, never
copied here) becomes one session through the public API: ``create_session``, then one
``save_message`` per turn, stamped with its sitting's date (LoCoMo dates sittings, not
turns). Each question with evidence (categories 1-4) is asked, and scores the share of
its evidence turns whose text, whole or one whole sentence of it, reached the model.

Strategies, each at every input budget:

- recency, BM25 (Okapi over whole turns), dense (cosine of the project's MiniLM vectors
  of question and whole turn) and their reciprocal-rank fusion (k=60): turns best first
  while they fit (recency stops at the first that does not), computed here over the
  conversation's turns, in the room the selector itself would have (the budget less the
  prompt, the system note and 4 tokens a message, all by the project's token counter);
- the selector through ``OblixClient.execute``, its request answered in-process by a
  model registered with litellm (``custom_provider_map``) that records what it was sent
  and answers "OK.", so answers add little for retrieval to find: words only and with
  embeddings, **warm** (one copy of the session per budget; the conversation's first 8
  adversarial questions, which are never scored, asked first; then the sample asked one
  after another, each leaving its Q/A pair in the session), and with embeddings
  **fresh** (each question the first turn on a new copy, by a new client: no token
  counts, word index or vectors cached; the first turn embeds what it can within the
  client's 2 s cap, as for a user).

The budget: the client's window is ``max_input_tokens`` and a turn reserves
``min(max_tokens, window // 2)`` of it for the answer, so a client with
``max_input_tokens = N + 16`` asked with ``max_tokens=16`` gives the selector exactly
N tokens (``OblixClient.plan``).

A warm session has its vectors already: the whole conversation is embedded once per
conversation by a plan with no time cap (``OblixClient.plan``, ``embed_seconds=inf``),
timed, and each warm copy starts from those vectors (the store keeps them by message
content, so a copy finds them), as a session used before would. Fresh copies are made
in a store of their own, which never holds the embedded session.

By default (``make bench``) about 40 questions per conversation (every k-th), and fresh
turns for every 20th of those at 2,000 tokens only: each fresh turn leaves the rest of
its copy to embed in the background (10-20 s of CPU here), which is waited out so it
cannot slow the next first turn. ``--full`` asks every question, and fresh ones at every
budget (``--fresh-every`` thins them).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import CachedCount, report
from locomo import (
    CATEGORIES,
    DATA,
    Conversation,
    Question,
    conversations,
    sample,
    score,
)

from oblix_jupyter import OblixClient
from oblix_jupyter.context.relevance import BM25_B, BM25_K1, chunks, query_terms, words
from oblix_jupyter.context.selector import MESSAGE_OVERHEAD, system_text
from oblix_jupyter.models.gateway import litellm_module
from oblix_jupyter.sessions import SessionManager

PROVIDER = "recorded"
MODEL = f"{PROVIDER}/locomo"
ANSWER = "OK."
ANSWER_RESERVE = 16  # tokens: each turn's max_tokens, added to the window so the selector's budget is exactly N
BUDGETS = (1000, 2000, 4000)
PER_CONVERSATION = 40
FRESH_EVERY = 20
FRESH_BUDGET = 2000  # the budget the selector is judged at (../shared/evals/README.md)
RRF_K = 60
STRATEGIES = {
    "recency": "recency (newest turns first)",
    "bm25": "BM25 over whole turns",
    "dense": "dense (MiniLM, whole turns)",
    "rrf": "BM25 + dense, reciprocal rank fusion",
    "words-warm": "selector, words only, warm",
    "semantic-warm": "selector, embeddings, warm",
    "semantic-fresh": "selector, embeddings, fresh",
}
_NOT_EMBEDDED = re.compile(r"(\d+) (?:of \d+ passages|passage\(s\)) not embedded yet")


class RecordingModel:
    """A model registered with litellm in-process: it records every request and answers ``ANSWER``.

    The gateway streams, so only the streaming path is served; nothing leaves the process.
    """

    def __init__(self) -> None:
        self.sent: list[str] = []  # the content of all messages of each request, joined

    def register(self) -> None:
        litellm = litellm_module()
        log = self

        class Handler(litellm.CustomLLM):
            def streaming(self, model: str, messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
                log.sent.append("\n".join(str(message["content"]) for message in messages))
                yield {"text": ANSWER, "is_finished": False, "finish_reason": "", "usage": None, "index": 0, "tool_use": None}
                usage = {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1}
                yield {"text": "", "is_finished": True, "finish_reason": "stop", "usage": usage, "index": 0, "tool_use": None}

        litellm.custom_provider_map = [*litellm.custom_provider_map, {"provider": PROVIDER, "custom_handler": Handler()}]
        litellm.utils.custom_llm_setup()


@dataclass
class Results:
    """Scores by (strategy, budget), as (category, score) pairs, and timings by name, in seconds."""

    scores: dict[tuple[str, int], list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    timings: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    not_embedded: list[float] = field(default_factory=list)  # share of passages without a vector on a fresh first turn


class TurnBM25:
    """Okapi BM25 (k1=1.2, b=0.75) over whole turns, with the project's words (stems, no stopwords).

    The project's ``LexicalIndex`` scores sentence-sized passages, not whole turns, so the
    "plain BM25 over whole turns" baseline is computed here; it shares the selector's
    tokenizer so that only the unit and the strategy differ.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self.counts = [Counter(words(text)) for text in texts]
        lengths = [sum(counts.values()) for counts in self.counts]
        average = sum(lengths) / len(lengths) or 1.0
        self.norms = [BM25_K1 * (1 - BM25_B + BM25_B * length / average) for length in lengths]
        frequency = Counter(term for counts in self.counts for term in counts)
        self.idf = {term: math.log(1 + (len(texts) - n + 0.5) / (n + 0.5)) for term, n in frequency.items()}

    def scores(self, query: str) -> list[float]:
        terms = query_terms(query)
        return [
            sum(
                self.idf[term] * weight * counts[term] * (BM25_K1 + 1) / (counts[term] + norm)
                for term, weight in terms.items()
                if term in counts
            )
            for counts, norm in zip(self.counts, self.norms)
        ]


def room(question: str, turns: int, budget: int, count: Callable[[str], int]) -> int:
    """What the selector has for earlier messages: the budget less the prompt and the system note for ``turns`` left out."""
    note = system_text({}, turns) or ""
    return budget - count(question) - count(note) - 2 * MESSAGE_OVERHEAD


def fill(order: Sequence[int], texts: Sequence[str], space: int, count: Callable[[str], int], stop_at_misfit: bool) -> str:
    """The text a single-signal strategy sends: turns in ``order`` while they fit, each costing its overhead too."""
    chosen = []
    for position in order:
        tokens = count(texts[position]) + MESSAGE_OVERHEAD
        if tokens > space:
            if stop_at_misfit:
                break
            continue
        chosen.append(texts[position])
        space -= tokens
    return "\n".join(chosen)


def baselines(
    conversation: Conversation,
    questions: Sequence[Question],
    budgets: Sequence[int],
    strategies: Sequence[str],
    embedder: Any,
    results: Results,
) -> None:
    """Recency, BM25, dense and their fusion over the conversation's turns (no Q/A pairs: nothing is asked here)."""
    count = CachedCount(MODEL)
    texts = [turn.text for turn in conversation.turns]
    by_id = {turn.turn_id: turn.text for turn in conversation.turns}
    bm25 = TurnBM25(texts)
    vectors = None
    if embedder is not None and {"dense", "rrf"} & set(strategies):
        started = time.perf_counter()
        vectors = embedder.embed(texts)
        results.timings["dense: turns embedded per second"].append(len(texts) / (time.perf_counter() - started))
    newest_first = list(range(len(texts) - 1, -1, -1))
    for question in questions:
        lexical = bm25.scores(question.text)
        by_words = sorted((p for p in range(len(texts)) if lexical[p] > 0), key=lambda p: -lexical[p])
        orders: dict[str, tuple[list[int], bool]] = {"recency": (newest_first, True), "bm25": (by_words, False)}
        if vectors is not None:
            cosine = vectors @ embedder.embed([question.text])[0]
            by_meaning = sorted(range(len(texts)), key=lambda p: -cosine[p])
            fused = {p: 1 / (RRF_K + rank) for rank, p in enumerate(by_meaning)}
            for rank, p in enumerate(by_words):
                fused[p] += 1 / (RRF_K + rank)
            orders["dense"] = (by_meaning, False)
            orders["rrf"] = (sorted(fused, key=fused.__getitem__, reverse=True), False)
        for budget in budgets:
            space = room(question.text, len(texts), budget, count)
            for name in strategies:
                if name in orders:
                    order, stop = orders[name]
                    sent = fill(order, texts, space, count, stop) + "\n" + question.text
                    results.scores[name, budget].append((question.category, score(question, by_id, sent)))


def build_session(client: OblixClient, conversation: Conversation) -> str:
    """The conversation as a stored session, turn by turn, each stamped with its sitting's date."""
    session_id = client.create_session_sync(title=f"LoCoMo {conversation.name}")
    for turn in conversation.turns:
        # save_message stores extra fields on the message, and a given timestamp replaces "now".
        stamp = turn.when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        client.session_manager.save_message(session_id, turn.text, role=turn.role, timestamp=stamp)
    return session_id


def ask(client: OblixClient, recorder: RecordingModel, prompt: str, session_id: str, budget: int) -> tuple[str, Any]:
    """One turn through ``execute_sync`` at ``budget``; returns what reached the model and the plan."""
    client.max_input_tokens = budget + ANSWER_RESERVE
    result = client.execute_sync(prompt, session_id, max_tokens=ANSWER_RESERVE)
    plan = result["plan"]
    assert plan.used <= budget, (plan.used, budget)
    return recorder.sent[-1], plan


def embed_session(store: str, base_id: str, conversation: Conversation, results: Results) -> None:
    """Embed the whole session once through the client, as turns would have over time: a plan with no time cap.

    Then the background embeds the session's words, as it would have between those
    turns: the warm copies' client finds them in the store.
    """
    client = OblixClient(model=MODEL, store=store, semantic=True, embed_seconds=math.inf)
    client.max_input_tokens = BUDGETS[0] + ANSWER_RESERVE
    session = client.get_session(base_id)
    passages = sum(len(chunks(turn.text)) for turn in conversation.turns)
    started = time.perf_counter()
    client.plan(conversation.warm_up[0] if conversation.warm_up else "Hello", session, MODEL)
    results.timings["semantic: session passages embedded per second"].append(passages / (time.perf_counter() - started))
    started = time.perf_counter()
    client.wait_for_background()
    results.timings["semantic: session words embedded (background)"].append(time.perf_counter() - started)


def selector_warm(
    client: OblixClient,
    recorder: RecordingModel,
    base_id: str,
    conversation: Conversation,
    questions: Sequence[Question],
    budget: int,
    name: str,
    results: Results,
) -> None:
    """The warm-up prompts, then the questions, one after another on one copy of the session."""
    by_id = {turn.turn_id: turn.text for turn in conversation.turns}
    store = client.session_manager
    session_id = store.copy_session(base_id)
    started = time.perf_counter()
    for prompt in conversation.warm_up:
        ask(client, recorder, prompt, session_id, budget)
    results.timings[f"{name}: warm-up ({len(conversation.warm_up)} turns)"].append(time.perf_counter() - started)
    for question in questions:
        started = time.perf_counter()
        sent, _ = ask(client, recorder, question.text, session_id, budget)
        results.timings[f"{name}: a turn"].append(time.perf_counter() - started)
        results.scores[name, budget].append((question.category, score(question, by_id, sent)))
    client.wait_for_background()  # else it competes with the next turn for the 2 cores
    client.delete_session(session_id)


def selector_fresh(
    store: str,
    recorder: RecordingModel,
    base_id: str,
    conversation: Conversation,
    questions: Sequence[Question],
    budget: int,
    results: Results,
) -> None:
    """Each question the first turn on a new copy of the session, by a new client (nothing of it cached).

    The copies live in a store of their own: in the base session's store they would find
    its vectors, kept there by message content. Each copy is deleted after its turn, its
    vectors with it, so the next one starts cold as well.
    """
    by_id = {turn.turn_id: turn.text for turn in conversation.turns}
    passages = sum(len(chunks(turn.text)) for turn in conversation.turns)
    base = SessionManager(store).get_session(base_id)
    for question in questions:
        client = OblixClient(model=MODEL, store=f"{store}-fresh", semantic=True)
        session_id = client.session_manager.add_session(base)
        started = time.perf_counter()
        sent, plan = ask(client, recorder, question.text, session_id, budget)
        results.timings["semantic-fresh: first turn"].append(time.perf_counter() - started)
        results.scores["semantic-fresh", budget].append((question.category, score(question, by_id, sent)))
        missing = next((int(m.group(1)) for note in plan.notes if (m := _NOT_EMBEDDED.search(note))), 0)
        results.not_embedded.append(missing / passages)
        client.delete_session(session_id)  # the background stops embedding it after the batch under way
        client.wait_for_background()  # else it competes with the next turn for the 2 cores


def percent(values: Sequence[float]) -> str:
    return f"{100 * statistics.fmean(values):.1f}" if values else "-"


def print_table(results: Results, budgets: Sequence[int], strategies: Sequence[str]) -> None:
    """Strategy × budget: the mean score over all questions and per category, in percent, with n."""
    columns = ["all", *CATEGORIES.values()]
    print(f"{'strategy':<38} {'budget':>6} " + " ".join(f"{c:>11}" for c in columns) + f" {'n':>5}")
    for name in strategies:
        for budget in budgets:
            rows = results.scores.get((name, budget))
            if not rows:
                continue
            cells = [percent([s for _, s in rows])]
            cells += [percent([s for c, s in rows if c == category]) for category in CATEGORIES]
            print(f"{STRATEGIES[name]:<38} {budget:>6} " + " ".join(f"{c:>11}" for c in cells) + f" {len(rows):>5}")


def print_timings(results: Results, load_seconds: float | None) -> None:
    if load_seconds is not None:
        report("embedding model: import and load", f"{load_seconds:.2f} s")
    for name, values in sorted(results.timings.items()):
        if name.endswith("per second"):
            report(name, f"{statistics.median(values):.0f} /s")
        elif name.endswith("turn"):
            report(f"{name} (median, max; n={len(values)})", f"{statistics.median(values):.2f}, {max(values):.2f} s")
        else:
            report(f"{name} (median of {len(values)})", f"{statistics.median(values):.1f} s")
    if results.not_embedded:
        share = statistics.fmean(results.not_embedded)
        report("semantic-fresh: passages without a vector on that turn", f"{100 * share:.0f}%")


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every question, and a fresh turn for each at every budget")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="input budgets in tokens, comma-separated")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, of: {', '.join(STRATEGIES)}")
    parser.add_argument("--conversations", default="", help="conversation names (file stems, e.g. 26,30); default all")
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions per conversation")
    parser.add_argument(
        "--fresh-every", type=int, default=None, help=f"fresh turns for every k-th question asked (default {FRESH_EVERY}; 1 with --full)"
    )
    parser.add_argument("--data", type=os.path.abspath, default=str(DATA), help="the directory of LoCoMo conversation files")
    options = parser.parse_args(argv)
    options.budgets = [int(value) for value in options.budgets.split(",") if value.strip()]
    options.strategies = [value.strip() for value in options.strategies.split(",") if value.strip()]
    unknown = set(options.strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies: {', '.join(sorted(unknown))}")
    options.conversations = [value.strip() for value in options.conversations.split(",") if value.strip()]
    if options.fresh_every is None:
        options.fresh_every = 1 if options.full else FRESH_EVERY
    judged = [budget for budget in options.budgets if budget == FRESH_BUDGET] or options.budgets[:1]
    options.fresh_budgets = options.budgets if options.full else judged
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = arguments(argv)
    chosen = conversations(pathlib.Path(options.data), options.conversations)
    if not chosen:
        print(f"(no LoCoMo conversations in {options.data}: skipped; see ../shared/evals/README.md)")
        return 0
    strategies = [name for name in STRATEGIES if name in options.strategies]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oblix-locomo-") as home:
        os.environ["HOME"] = os.environ["OBLIX_HOME"] = home  # never ~/.oblix, nor a user's litellm settings
        store = os.path.join(home, "sessions")
        recorder = RecordingModel()
        recorder.register()
        embedder, load_seconds = None, None
        if {"dense", "rrf", "semantic-warm", "semantic-fresh"} & set(strategies):
            from oblix_jupyter.context.embedder import load_embedder, unavailable_reason

            load_started = time.perf_counter()
            embedder = load_embedder()
            load_seconds = time.perf_counter() - load_started
            if embedder is None:
                print(f"(no embeddings: {unavailable_reason()}; dense and semantic strategies skipped)")
                strategies = [name for name in strategies if name in ("recency", "bm25", "words-warm")]
                load_seconds = None
        words_client = OblixClient(model=MODEL, store=store, semantic=False)
        semantic_client = OblixClient(model=MODEL, store=store, semantic=True)
        results = Results()
        asked, dropped = 0, 0
        for conversation in chosen:
            questions = sample(conversation.questions, None if options.full else PER_CONVERSATION, options.limit)
            asked += len(questions)
            dropped += conversation.dropped_evidence
            baselines(conversation, questions, options.budgets, strategies, embedder, results)
            base_id = build_session(words_client, conversation)
            if "semantic-warm" in strategies:
                embed_session(store, base_id, conversation, results)
            for budget in options.budgets:
                if "words-warm" in strategies:
                    selector_warm(words_client, recorder, base_id, conversation, questions, budget, "words-warm", results)
                if "semantic-warm" in strategies:
                    selector_warm(semantic_client, recorder, base_id, conversation, questions, budget, "semantic-warm", results)
                if "semantic-fresh" in strategies and budget in options.fresh_budgets:
                    fresh = questions[:: options.fresh_every]
                    selector_fresh(store, recorder, base_id, conversation, fresh, budget, results)
            print(f"  conversation {conversation.name}: {len(conversation.turns)} turns, {len(questions)} questions "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    names = ", ".join(conversation.name for conversation in chosen)
    print(f"\nLoCoMo ({names}): share of each question's evidence turns that reached the model, mean in %")
    kind = "all" if options.full else "a sample"
    print(f"{asked} questions of categories 1-4 ({kind}); {dropped} evidence ids naming no turn left out")
    print_table(results, options.budgets, strategies)
    print()
    print_timings(results, load_seconds)
    report("whole run", f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
