"""LoCoMo conversations as ``bench_locomo`` reads them, and how a question is scored.

LoCoMo (Maharana et al., ACL 2024; snap-research/locomo, CC BY-NC 4.0) holds long
conversations between two people over dozens of dated sittings, with questions whose
answers sit in named turns (``evidence``). The files live outside the repository
(``../shared/evals/locomo-dev``, see its README): they are read at run time, never
copied here. This module only reads them and scores; the strategies being compared
are in ``bench_locomo.py``.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "evals" / "locomo-dev"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}  # 5 (adversarial) has no answer
WARM_UP_QUESTIONS = 8  # unscored turns before a warm session's first scored question
MIN_SENTENCE_WORDS = 5  # a shorter sentence ("That's so sweet!") also occurs in other turns: it proves nothing

_TURN_ID = re.compile(r"D\d+:\d+")  # how the release names a turn ("D3:14"), the names evidence cites
_SITTING = re.compile(r"session_(\d+)")
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")  # the release also writes "D:11:26" and "D8:6; D9:17"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s+(?=\[shares a photo: )")


@dataclass(frozen=True)
class Turn:
    """One turn as the session stores it: ``role`` from the speaker, ``text`` as ``"Name: text"``."""

    turn_id: str
    role: str
    text: str
    when: datetime  # the sitting's date: LoCoMo dates sittings, not turns


@dataclass(frozen=True)
class Question:
    text: str
    category: int
    evidence: tuple[str, ...]  # turn ids of the turns that hold the answer


@dataclass
class Conversation:
    name: str  # the file's stem, e.g. "26"
    turns: list[Turn]
    questions: list[Question]  # categories 1-4 with evidence that names turns of this conversation
    warm_up: list[str]  # adversarial questions (category 5): real prompts of this conversation, never scored
    dropped_evidence: int  # evidence ids naming no turn (typos in the release), left out of the scores


def turn_text(name: str, turn: dict[str, object]) -> str:
    """``"Name: text"``, with a shared photo as ``" [shares a photo: caption]"`` after the text."""
    text = f"{name}: {turn['text']}"
    if turn.get("blip_caption"):
        text += f" [shares a photo: {turn['blip_caption']}]"
    return text


def _turn_id(turn: dict[str, object]) -> str:
    """The turn's name, found by its form: the release's field for it is not named in this repository."""
    return next(value for value in turn.values() if isinstance(value, str) and _TURN_ID.fullmatch(value))


def load(path: pathlib.Path) -> Conversation:
    """One conversation file: its sittings in order, its scorable questions and its warm-up prompts."""
    data = json.loads(path.read_text(encoding="utf-8"))
    sittings = sorted(int(match.group(1)) for key in data if (match := _SITTING.fullmatch(key)))
    turns = []
    for number in sittings:
        when = datetime.strptime(data[f"session_{number}_date_time"], "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)
        for turn in data[f"session_{number}"]:
            role = "user" if turn["speaker"] == data["speaker_a"] else "assistant"
            turns.append(Turn(_turn_id(turn), role, turn_text(turn["speaker"], turn), when))
    known = {turn.turn_id for turn in turns}
    questions, dropped = [], 0
    for entry in data["qa"]:
        if entry.get("category") not in CATEGORIES:
            continue
        cited = entry.get("evidence") or ()
        named = [f"D{sitting}:{number}" for text in cited for sitting, number in _EVIDENCE.findall(text)]
        evidence = tuple(dict.fromkeys(turn_id for turn_id in named if turn_id in known))
        dropped += len(set(named) - known) + sum(1 for text in cited if not _EVIDENCE.search(text))
        if evidence:
            questions.append(Question(str(entry["question"]), int(entry["category"]), evidence))
    warm_up = [str(entry["question"]) for entry in data["qa"] if entry.get("category") == 5][:WARM_UP_QUESTIONS]
    return Conversation(path.stem, turns, questions, warm_up, dropped)


def conversations(directory: pathlib.Path = DATA, names: Sequence[str] = ()) -> list[Conversation]:
    """The conversations in ``directory`` (only ``names``, when given), in name order."""
    paths = sorted(directory.glob("*.json"))
    if names:
        paths = [path for path in paths if path.stem in names]
    return [load(path) for path in paths]


def sample(questions: Sequence[Question], per_conversation: int | None, limit: int | None = None) -> list[Question]:
    """Every k-th question, k chosen to leave about ``per_conversation`` (None: all), then at most ``limit``.

    Every k-th rather than random keeps the sample deterministic and spread over the
    whole conversation, early sittings and late ones alike.
    """
    step = 1 if per_conversation is None else max(1, math.ceil(len(questions) / per_conversation))
    chosen = list(questions[::step])
    return chosen[:limit] if limit is not None else chosen


def _normal(text: str) -> str:
    return " ".join(text.split())


def sentences(text: str) -> list[str]:
    """The sentences of a turn that are long enough to count as having reached the model on their own."""
    return [piece for piece in _SENTENCE_END.split(text) if len(piece.split()) >= MIN_SENTENCE_WORDS]


def reached(text: str, sent: str) -> bool:
    """Whether a turn reached the model: its whole text, or one whole sentence of it, is in ``sent``.

    Whitespace is normalised on both sides: the selector joins the passages it keeps of
    a long message with single spaces and ``[…]``.
    """
    sent = _normal(sent)
    return _normal(text) in sent or any(_normal(piece) in sent for piece in sentences(text))


def score(question: Question, texts: dict[str, str], sent: str) -> float:
    """The share of the question's evidence turns that reached the model."""
    return sum(reached(texts[turn_id], sent) for turn_id in question.evidence) / len(question.evidence)
