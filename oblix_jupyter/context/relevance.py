"""How relevant each earlier message is to a new prompt, by its words and by its meaning.

Words: BM25 over a light-stemmed bag of words in which identifiers (``cust_df``) stay
whole, so notebook variable names count as words. Meaning: cosine similarity of
sentence-embedding vectors, computed elsewhere (``embedder``) and passed in. The two
are fused by rank into one score per passage, raised by the nearby messages' relevance
(``spread``) and for the days the prompt names by date (``dated``). Also here: cutting an
over-long text down to its relevant passages, since that is scored with the same words.

Everything is pure (no I/O, no model): the selector calls it on every turn.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from .porter import stem

# BM25's usual constants; the corpus is short chat messages, where they are known to work.
BM25_K1 = 1.2
BM25_B = 0.75
ELLIPSIS = "[…]"
MIN_CHUNK_CHARS = 40  # shorter passages ("Sure.", "Try this:") join a neighbour
COMMON_SHARE = 0.1  # terms in more passages than this share (and than COMMON_MINIMUM) are skipped
COMMON_MINIMUM = 1000
RANK_CONSTANT = 20  # reciprocal-rank fusion: 1 / (RANK_CONSTANT + rank) per signal (see ``fuse``)
NEIGHBOUR_SPREAD = 0.5  # a passage gains this share of the best relevance of the messages near its own (``spread``)...
NEIGHBOUR_WINDOW = 4  # ...up to this many messages before or after it
DATE_BOOST = 0.35  # a passage written on a day the prompt names by date gains this much relevance (``dated``)

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:[.,:]\d+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(\[])|\n+")

STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being below between both
    but by can could did do does doing done down during each few for from further get got had has have having he her
    here hers him his how i if in into is it its itself just let lets like me more most my no nor not now of off on
    once only or other our ours out over own same she should so some such than that the their them then there these
    they this those through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself ok okay please thanks thank sure yes one two use using used want need make way
    know think see go going well really still thing things something anything much many also could""".split()
)


def words(text: str) -> list[str]:
    """The terms of ``text``: stemmed words without stopwords, identifiers whole and split."""
    terms: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group().lower()
        if "_" in token.strip("_"):
            terms.append(token)  # a variable or column name: a word of its own
            terms.extend(stem(part) for part in token.split("_") if len(part) > 1 and part not in STOPWORDS)
        elif token not in STOPWORDS and (len(token) > 1 or token.isdigit()):
            terms.append(stem(token))
    return terms


def query_terms(prompt: str, extra_words: Iterable[str] = ()) -> dict[str, float]:
    """The prompt's terms with their counts; ``extra_words`` (variable names) count as words too."""
    weights: dict[str, float] = {}
    for term in words(prompt):
        weights[term] = weights.get(term, 0.0) + 1.0
    for name in extra_words:
        for term in words(name):
            weights.setdefault(term, 1.0)
    return weights


def chunks(text: str) -> list[str]:
    """The passages relevance is judged on: sentences and code blocks, tiny ones merged with a neighbour.

    Facts sit in one sentence of a long answer; scoring (and embedding) whole messages
    dilutes them among the rest, so both signals work on these pieces.
    """
    merged: list[str] = []
    for piece in passages(text):
        code = piece.startswith("```")
        if merged and not code and not merged[-1].startswith("```") and min(len(piece), len(merged[-1])) < MIN_CHUNK_CHARS:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged or [text]


class LexicalIndex:
    """BM25 statistics of a session's messages, by passage: built once, then extended as messages arrive.

    ``texts[c]`` is passage ``c``, ``owners[c]`` the position of its message, and
    ``spans[p]`` the passages of message ``p``. Scoring a prompt touches only the
    postings of its own terms, so it stays fast on sessions of thousands of messages.
    ``stamps[p]`` is message ``p``'s timestamp as given, read as a day only when a
    prompt names a date (``days``). ``questions[p]`` lists the passages of user
    message ``p`` that end in a question mark (messages without one are absent), and
    ``answered`` those of them that a model's answer (the next message, an assistant's
    with a ``model``) followed, so that a turn finds earlier questions without reading
    every message. ``describes``
    tells whether the index still matches a list of messages.
    """

    def __init__(self, messages: Iterable[Mapping[str, Any]] = ()) -> None:
        self.ids: list[Any] = []
        self.spans: list[tuple[int, int]] = []
        self.texts: list[str] = []
        self.owners: list[int] = []
        self.lengths: list[int] = []
        self.postings: dict[str, list[tuple[int, int]]] = {}
        self.starts: list[int] = []  # positions where an exchange begins (a user message, or the first)
        self.questions: dict[int, list[int]] = {}
        self.answered: set[int] = set()
        self.total_length = 0
        self._norm_cache: list[float] = []
        self._firsts: Any = None  # ``firsts``: where each message's passages begin, as a NumPy array
        self.stamps: list[str] = []
        self._days: list[int] = []  # ``days``: the stamps read so far
        self.extend(messages)

    def add(self, message_id: Any, text: str, role: str = "user", model: Any = None, timestamp: Any = None) -> None:
        position = len(self.ids)
        self.stamps.append(str(timestamp or ""))
        if role == "user" or not position:
            self.starts.append(position)
        if role == "assistant" and model:
            self.answered.update(self.questions.get(position - 1, ()))
        first = len(self.texts)
        for piece in chunks(text):
            number = len(self.texts)
            counts: dict[str, int] = {}
            for term in words(piece):
                counts[term] = counts.get(term, 0) + 1
            for term, frequency in counts.items():
                self.postings.setdefault(term, []).append((number, frequency))
            length = sum(counts.values())
            self.texts.append(piece)
            if role == "user" and piece.rstrip().endswith("?"):
                self.questions.setdefault(position, []).append(number)
            self.owners.append(position)
            self.lengths.append(length)
            self.total_length += length
        self.ids.append(message_id)
        self.spans.append((first, len(self.texts)))

    def extend(self, messages: Iterable[Mapping[str, Any]]) -> LexicalIndex:
        """Add the messages past the ones already indexed (a session only grows at its end)."""
        for message in itertools.islice(messages, len(self.ids), None):
            self.add(message.get("id"), str(message.get("content") or ""), str(message.get("role")), message.get("model"), message.get("timestamp"))
        return self

    def describes(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        """True when this index was built from exactly these messages (checked by their ids)."""
        if len(messages) != len(self.ids):
            return False
        return not messages or (messages[-1].get("id") == self.ids[-1] and messages[0].get("id") == self.ids[0])

    def idf(self, term: str) -> float:
        frequency = len(self.postings.get(term, ()))
        documents = len(self.texts)
        return math.log(1.0 + (documents - frequency + 0.5) / (frequency + 0.5)) if frequency else 0.0

    def scores(self, terms: Mapping[str, float]) -> dict[int, float]:
        """BM25 score of every passage that shares a term with the query (others score 0)."""
        if not self.texts:
            return {}
        common = max(COMMON_SHARE * len(self.texts), COMMON_MINIMUM)
        norms = self._norms()
        result: dict[int, float] = {}
        get = result.get
        boost = BM25_K1 + 1.0
        for term, weight in terms.items():
            postings = self.postings.get(term)
            if not postings or len(postings) > common:
                continue  # in a large share of a long session's passages: says little, and is the slowest to score
            idf = self.idf(term) * weight * boost
            for number, frequency in postings:
                result[number] = get(number, 0.0) + idf * frequency / (frequency + norms[number])
        return result

    def firsts(self, size: int) -> Any:
        """Where the passages of each message begin, for the messages whose passages begin before ``size``.

        A NumPy array, made again only when messages were added: ``spread`` reads it in
        every turn, and making it from ``spans`` took most of that step's time on a
        10,000-message session. ``size`` is the number of passages the caller's scores
        cover: the index may have grown under another turn since they were computed.
        """
        numpy = __import__("numpy")
        if self._firsts is None or len(self._firsts) != len(self.spans):
            self._firsts = numpy.fromiter((first for first, _ in self.spans), dtype=numpy.int64, count=len(self.spans))
        firsts = self._firsts
        return firsts if not len(firsts) or firsts[-1] < size else firsts[: numpy.searchsorted(firsts, size)]

    def days(self) -> list[int]:
        """The day of each message (a proleptic ordinal, UTC; -1 when its timestamp is unreadable).

        Read when a prompt first names a date, and kept: most prompts name none, and
        each timestamp is read once however many turns ask.
        """
        for stamp in self.stamps[len(self._days) :]:
            try:
                self._days.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).toordinal())
            except ValueError:
                self._days.append(-1)
        return self._days

    def _norms(self) -> list[float]:
        """BM25's length normalisation per passage, recomputed only when passages were added."""
        if len(self._norm_cache) != len(self.texts):
            average = self.total_length / len(self.texts) or 1.0
            self._norm_cache = [BM25_K1 * (1.0 - BM25_B + BM25_B * length / average) for length in self.lengths]
        return self._norm_cache


def semantic_scores(prompt_vector: Sequence[float] | None, message_vectors: Mapping[str, Any] | None, index: LexicalIndex) -> Any:
    """How close in meaning each passage of ``index`` is to the prompt: a NumPy array, NaN where there is no vector.

    ``message_vectors`` is a ``VectorTable`` (``embedder``), or any mapping of message id
    to one vector or one per passage, made into one. The measure is the table's
    centred cosine (``VectorTable.passage_similarities``).
    """
    if prompt_vector is None or message_vectors is None:
        return None
    from .embedder import VectorTable

    table = message_vectors if isinstance(message_vectors, VectorTable) else VectorTable.of(message_vectors)
    return table.passage_similarities(prompt_vector, index.ids, index.spans)


def unknown_count(semantic: Any) -> int:
    """How many passages ``semantic_scores`` had no vector for."""
    return int(sys.modules["numpy"].isnan(semantic).sum())


def fuse(lexical: Mapping[int, float], semantic: Any, size: int, floor: float = 0.0) -> Any:
    """One relevance in [0, 1] per passage, 1 for the best: BM25 alone, or fused with meaning by rank.

    Words and meaning are fused by their ranks (reciprocal-rank fusion), not their
    scores: BM25 scores and cosines have no common scale, and a passage that both rank
    high beats one that either ranks first. On the LoCoMo dev conversations at 2,000
    tokens, rank fusion sent 84.3% of the evidence and the best weighted sum of scaled
    scores 81.2%; ``RANK_CONSTANT`` 20 beat the customary 60 (86.0% against 84.3%).
    A passage without a vector is ranked by its words alone.

    With a ``floor`` (the least relevance the caller will use), only the ranks that can
    reach it are computed: a passage below ``depth`` in both rankings scores under
    ``2 / (RANK_CONSTANT + depth)``, and the best scores at least ``1 / (RANK_CONSTANT + 1)``.
    On a long session that spares sorting every passage twice in each turn (measured:
    see benchmarks/bench_context.py and README's "Speed").
    """
    best_lexical = max(lexical.values(), default=0.0)
    if semantic is None:
        fused = [0.0] * size
        for number, score in lexical.items():
            fused[number] = score / best_lexical
        return fused
    numpy = sys.modules["numpy"]
    depth = size if floor <= 0 else min(size, math.ceil(2.0 * (RANK_CONSTANT + 1) / floor))
    fused = numpy.zeros(size)
    known = numpy.flatnonzero(~numpy.isnan(semantic))
    fused[_best_first(known, semantic[known], depth)] = 1.0 / (RANK_CONSTANT + numpy.arange(1, min(depth, len(known)) + 1))
    if lexical:
        numbers = numpy.fromiter(lexical.keys(), dtype=numpy.int64, count=len(lexical))
        values = numpy.fromiter(lexical.values(), dtype=numpy.float64, count=len(lexical))
        fused[_best_first(numbers, values, depth)] += 1.0 / (RANK_CONSTANT + numpy.arange(1, min(depth, len(numbers)) + 1))
    top = fused.max() if size else 0.0
    return fused / top if top > 0 else fused


def spread(fused: Any, index: LexicalIndex) -> Any:
    """``fuse``'s relevance with each passage raised by ``NEIGHBOUR_SPREAD`` of the best passage nearby, scaled to 1 again.

    Nearby is up to ``NEIGHBOUR_WINDOW`` messages before or after the passage's own
    (two exchanges either side). In a conversation the turn that holds an answer often
    shares few words and little meaning with the question, while a turn near it (what
    it answers, or what follows it up) matches: the fact that a caller "went to the
    support group" is named in the reply to "what did you do yesterday?", and a story
    told over several turns names its subject once. On the LoCoMo dev conversations
    asked in turn, leave-one-out (``benchmarks/selector_loo.py``): raising by the
    message just before or after took the left-out mean at 1,000/2,000/4,000 tokens
    from 79.2/86.2/92.1% to 80.4/87.8/92.8% with embeddings, and by words alone the
    whole set from 70.7/79.2/83.9% to 75.7/83.3/87.7%. Widening that to 4 messages
    either side (1 to 8 tried; 4 chosen on each set of four conversations, with the
    dates) at 0.5 (0.35 to 0.55 tried; 0.5 chosen on four of five) took the left-out
    mean from 81.8/89.2/93.8% to 82.8/91.2/94.9% (the worst conversation at 2,000 from
    84.5 to 87.9%; with the selector's rule for short partner messages retuned,
    85.0/91.3/94.9%). Weighting the nearer messages more, or
    adding the neighbours up instead of taking their best, did no better; raising only
    passages next to a strongly relevant one did worse at every threshold tried.
    """
    numpy = __import__("numpy")  # a NumPy array already when meaning is used; words alone need it only here
    values = numpy.asarray(fused, dtype=numpy.float64)
    size = len(values)
    firsts = index.firsts(size)
    if len(firsts) < 2:
        return values
    best = numpy.maximum.reduceat(values, firsts)  # each message's best passage (every message has one)
    nearby = numpy.zeros_like(best)
    for distance in range(1, min(NEIGHBOUR_WINDOW, len(best) - 1) + 1):
        numpy.maximum(nearby[distance:], best[:-distance], out=nearby[distance:])  # the message ``distance`` before
        numpy.maximum(nearby[:-distance], best[distance:], out=nearby[:-distance])  # and after
    values = values + NEIGHBOUR_SPREAD * numpy.repeat(nearby, numpy.diff(numpy.append(firsts, size)))
    top = values.max()
    return values / top if top > 0 else values


def dated(values: Any, index: LexicalIndex, days: Sequence[tuple[int, int]]) -> Any:
    """``values`` with ``DATE_BOOST`` added to each passage of a message written within ``days``, scaled to 1 again.

    ``days`` are ``named_days`` of the prompt. "What did we settle on 3 March 2025?"
    asks about what was said that day, and the words of the answer rarely carry the
    date: the message's timestamp does. Every passage of those days gains, not only
    the ones the prompt's words or meaning found, so the day's talk can outrank
    passages of other days that merely share words. A date that covers more than half
    of the conversation's messages picks nothing out and changes nothing. Each named
    stretch reaches one day further either side, for the time zone the prompt was
    written in (timestamps are UTC). On the LoCoMo dev conversations asked in turn (91
    of the 760 questions name a date), leave-one-out with ``benchmarks/selector_loo.py``:
    the mean of the left-out conversations at 1,000/2,000/4,000 tokens went from
    80.5/88.2/93.2% without it to 81.8/89.1/93.8% (the worst conversation from 82.0 to
    84.5% at 2,000); 0.35 was chosen on four of the five and 0.2 on the fifth (0.1 to
    1 tried). Reaching up to 14 days after the named ones, and multiplying relevance
    instead of adding to it, measured the same.
    """
    if not days:
        return values
    numpy = __import__("numpy")
    values = numpy.asarray(values, dtype=numpy.float64)
    size = len(values)
    firsts = index.firsts(size)
    written = numpy.fromiter(index.days(), dtype=numpy.int64, count=len(index.stamps))[: len(firsts)]
    inside = numpy.zeros(len(firsts), dtype=bool)
    for first, last in days:
        inside |= (written >= first - 1) & (written <= last + 1)
    if not inside.any() or inside.sum() * 2 > len(inside):
        return values
    values = values + DATE_BOOST * numpy.repeat(inside, numpy.diff(numpy.append(firsts, size)))
    top = values.max()
    return values / top if top > 0 else values


_MONTH = r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_ORDINAL = r"(\d{1,2})(?:st|nd|rd|th)?"
_DAY_FORMS = (  # each with the groups of its year, month and day
    (re.compile(rf"\b{_ORDINAL}\s+(?:of\s+)?{_MONTH},?\s+(\d{{4}})\b", re.IGNORECASE), (3, 2, 1)),  # 8th May, 2023
    (re.compile(rf"\b{_MONTH}\s+{_ORDINAL},?\s*(\d{{4}})\b", re.IGNORECASE), (3, 1, 2)),  # May 8, 2023
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), (1, 2, 3)),  # 2023-05-08
)
_MONTH_YEAR = re.compile(rf"\b{_MONTH},?\s+(?:of\s+)?(\d{{4}})\b", re.IGNORECASE)
_YEAR = re.compile(r"\b((?:19|20)\d\d)\b")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def named_days(prompt: str) -> list[tuple[int, int]]:
    """The stretches of days ``prompt`` names by a date with its year, as (first, last) proleptic ordinals.

    A day ("8 May 2023", "May 8th, 2023", "2023-05-08"), a month ("July 2022") or a
    year ("in 2024"); a day or month without its year ("in May") is left alone, as
    "may" is mostly a verb and the year would be a guess.
    """
    days: list[tuple[int, int]] = []
    text = prompt
    for pattern, (year, month, day) in _DAY_FORMS:
        for match in pattern.finditer(text):
            number = match.group(month)
            with contextlib.suppress(ValueError):  # "31 February 2023"
                ordinal = date(int(match.group(year)), int(number) if number.isdigit() else _month(number), int(match.group(day))).toordinal()
                days.append((ordinal, ordinal))
        text = pattern.sub(_blank, text)  # so that "8 May 2023" is not read again as "May 2023"
    for match in _MONTH_YEAR.finditer(text):
        year, month = int(match.group(2)), _month(match.group(1))
        days.append((date(year, month, 1).toordinal(), date(year + month // 12, month % 12 + 1, 1).toordinal() - 1))
    for match in _YEAR.finditer(_MONTH_YEAR.sub(_blank, text)):
        year = int(match.group(1))
        days.append((date(year, 1, 1).toordinal(), date(year, 12, 31).toordinal()))
    return days


def _month(name: str) -> int:
    return _MONTHS.index(name[:3].lower()) + 1


def _blank(match: re.Match[str]) -> str:
    return " " * len(match.group())


def _best_first(numbers: Any, values: Any, depth: int) -> Any:
    """The ``depth`` of ``numbers`` with the highest ``values``, best first (ties in the given order)."""
    numpy = sys.modules["numpy"]
    if len(values) > depth:
        top = numpy.sort(numpy.argpartition(-values, depth - 1)[:depth])
        numbers, values = numbers[top], values[top]
    return numbers[numpy.argsort(-values, kind="stable")]


def best_passages(fused: Any, limit: int, floor: float) -> list[int]:
    """The ``limit`` passages with the highest fused relevance of at least ``floor``, best first."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(fused, numpy.ndarray):
        if fused.size > limit:
            top = numpy.argpartition(-fused, limit)[:limit]
        else:
            top = numpy.arange(fused.size)
        top = top[fused[top] >= floor]
        return top[numpy.argsort(-fused[top], kind="stable")].tolist()
    chosen = heapq.nlargest(limit, (number for number, value in enumerate(fused) if value >= floor), key=fused.__getitem__)
    return chosen


def search(index: LexicalIndex, query: str, limit: int, vectors: Mapping[str, Any] | None = None, query_vector: Any = None) -> list[tuple[Any, str]]:
    """The ``limit`` passages of ``index`` most relevant to ``query``, best first, with their message's id.

    The selector's own relevance (words fused with meaning when both vectors are
    given), for a model that asks to search the conversation itself; passages that
    share nothing with the query are left out.
    """
    fused = fuse(index.scores(query_terms(query)), semantic_scores(query_vector, vectors, index), len(index.texts))
    return [(index.ids[index.owners[number]], index.texts[number]) for number in best_passages(fused, limit, 1e-9)]


def passages(text: str) -> list[str]:
    """``text`` in pieces that can be kept or dropped: code blocks whole, prose by sentence."""
    pieces: list[str] = []
    for number, block in enumerate(text.split("```")):
        if number % 2:  # inside a code fence
            pieces.append(f"```{block}```")
        else:
            pieces.extend(piece for piece in _SENTENCE_END.split(block) if piece.strip())
    return [piece.strip() for piece in pieces if piece.strip()]


def truncate_to_tokens(text: str, max_tokens: int, count: Callable[[str], int], marker: str = " " + ELLIPSIS) -> str:
    """The longest prefix of ``text`` (cut at a word) that fits ``max_tokens`` with ``marker`` added."""
    if count(text) <= max_tokens:
        return text
    low, high = 0, len(text)
    while low < high:  # binary search on characters: a handful of count() calls
        middle = (low + high + 1) // 2
        if count(text[:middle] + marker) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    cut = text[:low]
    space = cut.rfind(" ")
    if space > len(cut) * 0.6:
        cut = cut[:space]
    return (cut.rstrip() + marker) if cut.strip() else ""


def cut_to_relevant(
    text: str, terms: Mapping[str, float], max_tokens: int, count: Callable[[str], int], idf: Callable[[str], float]
) -> str:
    """The passages of ``text`` that best match ``terms``, in their order, within ``max_tokens``.

    Skipped stretches are shown as ``[…]`` so the model (and the user) can see the cut.
    When no passage shares a word with the query, the beginning is kept.
    """
    pieces = passages(text)
    scores = [sum(idf(term) * terms[term] for term in set(words(piece)) if term in terms) for piece in pieces]
    matching = sorted((n for n, score in enumerate(scores) if score > 0), key=lambda n: -scores[n])
    if matching:  # the matching passages, best first, then the ones next to them for context
        order = matching + [n for m in matching for n in (m - 1, m + 1) if 0 <= n < len(pieces) and scores[n] <= 0]
    else:
        order = list(range(len(pieces)))
    kept: set[int] = set()
    result = ""
    for number in dict.fromkeys(order):
        trial = join_passages(pieces, kept | {number})
        if count(trial) <= max_tokens:
            kept.add(number)
            result = trial
    if not kept:  # even the best passage alone is too long: keep its beginning
        return truncate_to_tokens(pieces[order[0]] if pieces else text, max_tokens, count)
    return result


def join_passages(pieces: Sequence[str], kept: set[int]) -> str:
    """The ``kept`` pieces in order, with ``[…]`` wherever something was left out."""
    parts: list[str] = []
    previous = -1
    for number in sorted(kept):
        if number != previous + 1:
            parts.append(ELLIPSIS)
        parts.append(pieces[number])
        previous = number
    if previous != len(pieces) - 1:
        parts.append(ELLIPSIS)
    text = parts[0] if parts else ""
    for before, after in zip(parts, parts[1:]):
        text += ("\n" if before.startswith("```") or after.startswith("```") else " ") + after
    return text
