"""Generate the context-selection evaluation set: long notebook conversations with planted facts.

Deterministic (seeded): ``conversations()`` returns the same sessions on every machine, so
the benchmark needs no committed data. Each conversation is one theme of ``facts.py``:
300-420 messages of ordinary notebook chatter (pandas questions, errors, plots, modelling
advice, in the theme's vocabulary so that much of it *looks* relevant), with the theme's
ten facts said early, inside messages about other things (the assistant's facts answer
a question the user asked just before). The questions come at the end.

Run it to see the set's size, or ``--write PATH`` to dump it as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

try:
    from .facts import THEMES, Fact, Theme
except ImportError:  # run as a script
    from facts import THEMES, Fact, Theme  # type: ignore[no-redef]

SEED = 20240607

USER_ASKS = (
    "How can I count the missing values per column in `{var}`?",
    "Can you show me how to plot {col} over time from `{var}`?",
    "I get `KeyError: '{col}'` when I run `{var}['{col}'].mean()`. What's wrong?",
    "What's the fastest way to group `{var}` by {col} and average {col2}?",
    "Should I scale {col} before training the {model}?",
    "How do I save `{var}` to parquet without losing the dtypes?",
    "The {model} takes {n} minutes to train. Can we make it faster?",
    "Can you explain what {metric} means in plain words?",
    "How do I check whether {col} and {col2} are correlated?",
    "ok thanks, that worked",
    "Can you rewrite that with a list comprehension instead of the loop?",
    "Why does `{var}.merge(...)` suddenly give me more rows than before?",
    "How should I pick a threshold for outliers in {col}?",
    "Can the chart of {col} look nicer for the report? The labels overlap.",
    "What's a sensible way to cross-validate the {model}?",
    "I'm getting a SettingWithCopyWarning on `{var}`, should I worry?",
    "Can you summarise what we did in the last few steps?",
    "How do I convert {col} to datetime when some values are empty strings?",
    "Which features should I try next for the {model}?",
    "How big is `{var}` in memory, and how can I shrink it?",
    "Is {metric} the right thing to report to management here?",
    "The notebook kernel died while loading `{var}`. Any idea why?",
    "How do I bin {col} into quintiles?",
    "Can you write a function that returns the top {n} rows of `{var}` by {col}?",
    "What does `{var}.describe()` tell us about {col}?",
    "Great. Next question: how do I one-hot encode {col}?",
    "I think {col} has some duplicated entries. How do I find them?",
    "How would you explain the {model} to someone non-technical?",
    "Is it a problem that {col} is skewed?",
    "Let's move on. Can you check the dtypes of `{var}` for me?",
)

ASSISTANT_OPENERS = (
    "Sure. The simplest way is this:",
    "Good question. Here's one way to do it:",
    "That usually comes from the index. Try this:",
    "You can do it in one line with pandas:",
    "Here's a version that also handles the edge cases:",
    "Yes, that's worth a quick check first:",
    "It depends a little on the data, but this is a good start:",
    "Let's do it step by step:",
)

CODE_SNIPPETS = (
    "{var}.isna().sum().sort_values(ascending=False)",
    "{var}.groupby('{col}')['{col2}'].mean().sort_values()",
    "ax = {var}.plot(x='{col}', y='{col2}', figsize=(10, 4))\nax.set_title('{col2} by {col}')\nplt.tight_layout()",
    "{var}['{col}'] = pd.to_datetime({var}['{col}'].replace('', None), errors='coerce')",
    "from sklearn.model_selection import TimeSeriesSplit\ncv = TimeSeriesSplit(n_splits={k})\nfor train_idx, test_idx in cv.split({var}):\n    ...",
    "{var}.to_parquet('{var}.parquet', index=False)",
    "{var}['{col}'].corr({var}['{col2}'], method='spearman')",
    "{var}.loc[:, '{col}'] = {var}['{col}'].astype('category')",
    "pd.qcut({var}['{col}'], q=5, labels=False)",
    "{var}.nlargest({n}, '{col}')",
    "pd.get_dummies({var}, columns=['{col}'], drop_first=True)",
    "{var}[{var}.duplicated(subset=['{col}'], keep=False)].sort_values('{col}')",
    "{var}.memory_usage(deep=True).sum() / 1e6  # megabytes",
    "q1, q3 = {var}['{col}'].quantile([0.25, 0.75])\niqr = q3 - q1\nmask = {var}['{col}'].between(q1 - 1.5 * iqr, q3 + 1.5 * iqr)",
    "{var}.dtypes.value_counts()",
    "np.log1p({var}['{col}']).hist(bins=50)",
)

ASSISTANT_NOTES = (
    "This returns one value per group, so you can sort or plot it directly.",
    "If the column has mixed types, convert it first, otherwise pandas falls back to object dtype.",
    "Keep in mind that this copies the data, which matters for a large frame.",
    "For {metric}, a difference this small is within the noise of a single split.",
    "The {model} is not sensitive to the scale of {col}, but a linear model would be.",
    "Check the result on a few rows by hand before trusting it.",
    "With {n} folds you get a more stable estimate, at the cost of training time.",
    "The warning is harmless here because we assign through `.loc`.",
    "If {col} has many rare values, group them into an 'other' level first.",
    "That should cut the runtime roughly in half on this machine.",
    "I'd also log the parameters so the run can be repeated later.",
    "It is worth looking at the distribution of {col2} before and after.",
    "Restarting the kernel and rerunning from the top avoids stale variables.",
    "A quick sanity check is to compare the totals with the raw export.",
    "If memory is tight, read only the columns you need with `usecols`.",
    "The same idea works for {col2}; only the column name changes.",
)

CLOSERS = ("", "", "Anyway, ", "Also, ", "By the way: ")


@dataclass
class Question:
    conversation: str
    message_id: str
    question: str
    key: str


def _fill(template: str, theme: Theme, rng: random.Random) -> str:
    col, col2 = rng.sample(theme.columns, 2)
    return template.format(
        var=rng.choice(theme.variables),
        col=col,
        col2=col2,
        model=rng.choice(theme.models),
        metric=rng.choice(theme.metrics),
        n=rng.choice((3, 5, 10, 20, 40)),
        k=rng.choice((3, 5, 10)),
    )


def _user_filler(theme: Theme, rng: random.Random) -> str:
    text = _fill(rng.choice(USER_ASKS), theme, rng)
    if rng.random() < 0.35:
        text = rng.choice(theme.domain) + " " + text
    return text


def _assistant_filler(theme: Theme, rng: random.Random) -> str:
    parts = [rng.choice(ASSISTANT_OPENERS)]
    code = "\n".join(_fill(rng.choice(CODE_SNIPPETS), theme, rng) for _ in range(rng.choice((1, 2, 2, 3))))
    parts.append(f"```python\n{code}\n```")
    for _ in range(rng.choice((2, 3, 3, 4, 5, 6))):
        parts.append(_fill(rng.choice(ASSISTANT_NOTES), theme, rng))
    if rng.random() < 0.5:
        parts.append(" ".join(rng.sample(theme.domain, rng.choice((1, 2)))))
    return "\n\n".join(parts)


def _fact_message(fact: Fact, theme: Theme, rng: random.Random) -> str:
    """The fact inside a message about something else, as facts are usually said."""
    if fact.speaker == "user":
        ask = _user_filler(theme, rng)
        return f"{fact.text} {rng.choice(CLOSERS)}{ask[0].lower() if rng.random() < 0.5 else ask[0]}{ask[1:]}".strip()
    filler = _assistant_filler(theme, rng).split("\n\n")
    position = rng.randrange(1, len(filler) + 1)
    return "\n\n".join([*filler[:position], fact.text, *filler[position:]])


def conversation(theme: Theme, rng: random.Random) -> tuple[dict[str, Any], list[Question]]:
    """One session dict (the store's shape) and the questions about its planted facts."""
    length = rng.randrange(300, 421) // 2 * 2
    early = range(4, int(length * 0.4), 2)  # exchange starts (user messages), after the task statement
    slots = sorted(rng.sample(early, len(theme.facts)))
    planted = dict(zip(slots, rng.sample(theme.facts, len(theme.facts))))
    keys = [fact.key.lower() for fact in theme.facts]
    messages: list[dict[str, Any]] = []
    questions: list[Question] = []

    def add(role: str, content: str) -> str:
        message_id = f"msg_{len(messages) + 1}"
        messages.append({"id": message_id, "role": role, "content": content})
        return message_id

    add("user", theme.task)
    add("assistant", "Got it. Let's start by loading the data and looking at its shape, types and missing values.")
    while len(messages) < length:
        fact = planted.get(len(messages))
        if fact is not None and fact.speaker == "user":
            questions.append(Question(theme.name, add("user", _fact_message(fact, theme, rng)), fact.question, fact.key))
        elif fact is not None:
            add("user", fact.lead_in)
        else:
            add("user", _clean(_user_filler, theme, rng, keys))
        if fact is not None and fact.speaker == "assistant":
            questions.append(Question(theme.name, add("assistant", _fact_message(fact, theme, rng)), fact.question, fact.key))
        else:
            add("assistant", _clean(_assistant_filler, theme, rng, keys))
    session = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"oblix-eval-{theme.name}")), "title": f"{theme.name} notebook", "messages": messages, "context": {}}
    return session, questions


def _clean(make: Any, theme: Theme, rng: random.Random, keys: list[str]) -> str:
    """Filler that does not happen to contain a fact's key (which would make the answer ambiguous)."""
    while True:
        text = make(theme, rng)
        lowered = text.lower()
        if not any(key in lowered for key in keys):
            return text


def conversations(seed: int = SEED) -> Iterator[tuple[dict[str, Any], list[Question]]]:
    rng = random.Random(seed)
    for theme in THEMES:
        yield conversation(theme, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", help="write the sessions and questions as JSON")
    args = parser.parse_args()
    data = []
    for session, questions in conversations():
        print(f"{session['id']:<16} {len(session['messages'])} messages, {len(questions)} questions")
        data.append({"session": session, "questions": [q.__dict__ for q in questions]})
    if args.write:
        with open(args.write, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
