"""The context selector: what the model sees on a turn, and why.

A pure function of (session, prompt, budget, token counter) so it can be tested
exhaustively and shown to the user: the plan it returns is exactly what the gateway
sends, with one explanation line per choice. This is the recency version; its
budget rules (system first, prompt always, then the newest messages that fit) are
the floor the relevance-based selector builds on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import PromptTooLarge

# Chat formats wrap each message in a few tokens of their own (role markers etc.).
MESSAGE_OVERHEAD = 4


@dataclass(frozen=True)
class PlanItem:
    """One message of the plan and the reason it was chosen."""

    role: str
    reason: str  # "system", "prompt", "recent"
    tokens: int
    message_id: str | None = None


@dataclass
class ContextPlan:
    """The messages to send, in order, with what was chosen, dropped and why."""

    messages: list[dict[str, str]]
    items: list[PlanItem]
    budget: int
    omitted: list[str] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(item.tokens for item in self.items)

    def explain(self) -> str:
        """A Markdown table of the plan, for ``--explain`` and the chat panel."""
        rows = ["| # | role | why | message | tokens |", "|---|---|---|---|---|"]
        for number, item in enumerate(self.items, start=1):
            rows.append(f"| {number} | {item.role} | {item.reason} | {item.message_id or ''} | {item.tokens} |")
        rows.append(f"\n**{self.used} of {self.budget} tokens used**; {len(self.omitted)} earlier message(s) left out.")
        return "\n".join(rows)


def system_text(context: dict[str, Any], omitted: int) -> str | None:
    """The system message: the session's initial context, and a note when history was cut."""
    parts = []
    if context:
        parts.append("Context for this conversation (JSON):\n" + json.dumps(context, ensure_ascii=False, indent=1))
    if omitted:
        parts.append(f"{omitted} earlier message(s) of this conversation were omitted to fit the context window.")
    return "\n\n".join(parts) or None


def select_context(
    session: dict[str, Any] | None,
    prompt: str,
    budget: int,
    count: Callable[[str], int],
    history: bool = True,
) -> ContextPlan:
    """Choose the system message, the newest earlier messages that fit, and the prompt.

    ``count`` gives the tokens of a text; ``budget`` is the input window left after
    the answer's reserve. Raises ``PromptTooLarge`` when the prompt alone does not fit.
    """
    context = (session or {}).get("context") or {}
    earlier = [m for m in (session or {}).get("messages", []) if m.get("content") and m.get("role") in ("user", "assistant")]
    if not history:
        earlier = []
    prompt_tokens = count(prompt) + MESSAGE_OVERHEAD
    # Reserve room for the system message as it would read if history were cut.
    system_reserve = _system_tokens(context, len(earlier), count)
    if prompt_tokens + system_reserve > budget:
        raise PromptTooLarge(
            f"The prompt needs about {prompt_tokens} tokens but the model's input budget is {budget - system_reserve}. "
            "Shorten it or use a model with a larger window."
        )
    room = budget - prompt_tokens - system_reserve
    chosen: list[tuple[dict[str, Any], int]] = []
    for message in reversed(earlier):
        tokens = count(message["content"]) + MESSAGE_OVERHEAD
        if tokens > room:
            break
        chosen.append((message, tokens))
        room -= tokens
    chosen.reverse()
    omitted = [m.get("id", "") for m in earlier[: len(earlier) - len(chosen)]]

    messages: list[dict[str, str]] = []
    items: list[PlanItem] = []
    system = system_text(context, len(omitted))
    if system:
        messages.append({"role": "system", "content": system})
        items.append(PlanItem("system", "system", count(system) + MESSAGE_OVERHEAD))
    for message, tokens in chosen:
        messages.append({"role": message["role"], "content": message["content"]})
        items.append(PlanItem(message["role"], "recent", tokens, message.get("id")))
    messages.append({"role": "user", "content": prompt})
    items.append(PlanItem("user", "prompt", prompt_tokens))
    return ContextPlan(messages=messages, items=items, budget=budget, omitted=omitted)


def _system_tokens(context: dict[str, Any], earlier: int, count: Callable[[str], int]) -> int:
    text = system_text(context, earlier)
    return count(text) + MESSAGE_OVERHEAD if text else 0
