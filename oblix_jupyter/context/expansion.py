"""The prompt's words widened by meaning: the conversation's own words closest to each, looked for as well.

A conversation often names a thing in other words than the question does: asked about
"the kids", it said "children"; asked about "pottery", it said "pots" and "clay"; asked
about "activities", it spoke of a "hobby" (the neighbours found on a LoCoMo
conversation). BM25 finds none of those. Each distinct word of the conversation has a vector
of its own (embedded alone, as a one-word message would be: ``vector_cache`` keeps them);
for each word of the prompt found among them, the ``NEIGHBOURS`` closest by centred
cosine, if at least ``MIN_SIMILARITY``, join BM25's query as their stems, weighted
``WEIGHT`` times that cosine. A capitalised word after the first is taken for a name and
not widened: the names closest to "Caroline" are other people. A prompt's word the
conversation never wrote is widened too, with a vector of its own embedded beside the
prompt's (``WordTable.with_unwritten``).

On the LoCoMo dev conversations asked in turn, leave-one-out
(``benchmarks/selector_loo.py``, the words embedded as the vector cache keeps them): the
left-out mean at 1,000/2,000/4,000 tokens went from 85.1/91.8/94.9% to 85.4/92.5/95.4%,
the worst conversation at 2,000 from 89.1 to 89.8%, every conversation better at 2,000
(at 1,000 one lost 0.7), open-domain questions most (64.8 to 68.9% at 2,000); only
single-hop questions at 1,000 lost (93.7 to 93.5%). ``MIN_SIMILARITY`` 0.3 to 0.6 tried (0.4 chosen on four of five
sets of four conversations), ``WEIGHT`` 0.3 to 1 (0.7 on three); the tuned left-out
means at 2,000, 92.3 and 92.2%, are what these choices are worth on conversations not
tuned on. Widening also the prompt's words the conversation never wrote (embedded
beside the prompt, ``vector_cache.embed_prompt_ahead``: "toddlers" brings "children")
took the left-out mean to 85.9/92.8/95.6%, open-domain questions at 2,000 to 72.3%; the
threshold tuned again chose 0.4 on every set of four (92.8%), the weight 0.5 on four
(92.7%). Its cost: the worst conversation at 2,000 went from 89.8 to 89.3%.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from copy import copy
from functools import cached_property
from typing import Any

from .embedder import VectorTable
from .relevance import STOPWORDS, words

NEIGHBOURS = 3
MIN_SIMILARITY = 0.4
WEIGHT = 0.7

_WORD = re.compile(r"[A-Za-z][A-Za-z]+")
_LOOKED_AT = 16  # nearest words looked at per prompt word, for NEIGHBOURS whose stems are new


def vocabulary(texts: Iterable[str], into: dict[str, None] | None = None) -> dict[str, None]:
    """The words of ``texts`` that get a vector, lowercased, in the order first met (added to ``into``, if given).

    Three letters or more, no stopword: the words BM25 counts, as written rather than stemmed,
    because the embedding model reads words, not stems.
    """
    found = {} if into is None else into
    for text in texts:
        for match in _WORD.finditer(text):
            word = match.group().lower()
            if len(word) > 2 and word not in STOPWORDS:
                found[word] = None
    return found


def widened_words(prompt: str) -> list[str]:
    """The prompt's words that ``widen`` looks for neighbours of: its vocabulary, less the names (capitalised after the first word)."""
    written = [match.group() for match in _WORD.finditer(prompt)]
    return list(vocabulary(word for number, word in enumerate(written) if number == 0 or not word[0].isupper()))


class WordTable:
    """A conversation's words and their vectors, for ``widen``: a ``VectorTable`` whose messages are single words (a row each)."""

    def __init__(self, vectors: VectorTable) -> None:
        self.vectors = vectors
        self.unwritten: Mapping[str, Any] = {}  # vectors of a prompt's words the conversation never wrote (``with_unwritten``)

    def lacking(self, prompt: str) -> list[str]:
        """The words of ``prompt`` that ``widen`` would look for and this table has no vector of."""
        return [word for word in widened_words(prompt) if word not in self.vectors.rows]

    def with_unwritten(self, vectors: Mapping[str, Any]) -> WordTable:
        """This table for one prompt, with ``vectors`` of its words the conversation never wrote (``lacking``): they are widened too.

        The conversation's own words are still the only neighbours: a word it never wrote
        would bring BM25 nothing. What the table computed (stems, norms) is shared.
        """
        table = copy(self)
        table.unwritten = vectors
        return table

    @classmethod
    def of(cls, words: Sequence[str], rows: Any) -> WordTable:
        """A table of ``words`` with one vector each (``rows``, in their order)."""
        return cls(VectorTable.of(dict(zip(words, rows))))

    def __len__(self) -> int:
        return len(self.vectors)

    def prepare(self) -> None:
        """Compute now what ``widen`` needs (the table's centred norms, the words' stems), so that a turn need not."""
        self.vectors.prepare()
        self._stems  # noqa: B018 - a cached property, computed for later

    def widen(self, prompt: str, terms: Mapping[str, float]) -> dict[str, tuple[str, float]]:
        """The terms to look for besides ``terms`` (the prompt's own): each neighbour's stem, with the word and its weight."""
        numpy = __import__("numpy")
        vectors, stems = self.vectors, self._stems
        own = [vectors[word][0] if word in vectors.rows else self.unwritten.get(word) for word in widened_words(prompt)]
        rows = [vector for vector in own if vector is not None]
        if not rows or len(vectors) < 2:
            return {}
        similarities = vectors.similarities(numpy.stack(rows))  # words × prompt words
        depth = min(_LOOKED_AT, len(vectors))
        nearest = numpy.argpartition(-similarities, depth - 1, axis=0)[:depth]
        added: dict[str, tuple[str, float]] = {}
        for column in range(len(rows)):
            order = nearest[numpy.argsort(-similarities[nearest[:, column], column]), column]
            taken = 0
            for number in order.tolist():
                similarity = float(similarities[number, column])
                if similarity < MIN_SIMILARITY or taken == NEIGHBOURS:
                    break
                stem = stems[number]
                if stem is None or stem in terms or stem in added:
                    continue
                added[stem] = (vectors.ids[number], WEIGHT * similarity)
                taken += 1
        return added

    @cached_property
    def _stems(self) -> list[str | None]:
        return [next(iter(words(word)), None) for word in self.vectors.ids]
