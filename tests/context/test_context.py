"""The context selector as a pure function: budgets, order, pins, relevance and the notebook's state."""

from __future__ import annotations

import functools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oblix_jupyter.context.inputs import NotebookContext, VariableSummary
from oblix_jupyter.context.relevance import LexicalIndex
from oblix_jupyter.context.selector import (
    FAILED,
    MESSAGE_OVERHEAD,
    MIN_PIECE,
    conversation_messages,
    failed_exchange,
    select_context,
    start_selection,
)
from oblix_jupyter.errors import PromptTooLarge
from oblix_jupyter.models.gateway import count_tokens

FILLER = (
    "Sure, here is how to plot the monthly totals with matplotlib and keep the labels readable.",
    "How do I merge the two frames on the customer id without duplicating rows?",
    "You can use groupby with agg and then reset_index to get a flat table back.",
    "Thanks, that worked. Next I want to check the distribution of the prices.",
    "A histogram with 50 bins and a log scale on the x axis shows the long tail well.",
    "Can you explain the difference between loc and iloc once more?",
)


def approx(text: str) -> int:
    return len(text.split()) + 1


@functools.lru_cache(maxsize=None)
def litellm_count(model: str, text: str) -> int:
    return count_tokens(model, text)


def session_of(*texts: str, roles: tuple[str, ...] = ("user", "assistant"), **fields) -> dict:
    messages = [{"id": f"msg_{n + 1}", "role": roles[n % len(roles)], "content": text} for n, text in enumerate(texts)]
    return {"id": "s", "messages": messages, "context": {}, **fields}


def filler_session(size: int, **fields) -> dict:
    return session_of(*(f"{FILLER[n % len(FILLER)]} (step {n})" for n in range(size)), **fields)


def sent_ids(plan) -> list[str]:
    return [item.message_id for item in plan.items if item.message_id]


def recount(plan, count) -> int:
    return sum(count(message["content"]) + MESSAGE_OVERHEAD for message in plan.messages)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-3.5-turbo", "claude-3-5-sonnet-20241022", "ollama/llama3"])
@pytest.mark.parametrize("budget", [120, 400, 1500])
def test_budget_is_respected_exactly_with_litellm_counts(model, budget):
    count = functools.partial(litellm_count, model)
    session = filler_session(60, context={"project": "sales"})
    plan = select_context(session, "How do I plot the monthly totals by customer?", budget, count)
    assert plan.used == recount(plan, count) <= budget
    assert plan.used > budget * 0.6  # the budget is used, not wasted
    assert plan.messages[-1] == {"role": "user", "content": "How do I plot the monthly totals by customer?"}


def test_recent_exchanges_stay_whole_and_in_order():
    session = session_of(*(f"question {n} " + "word " * 8 if n % 2 == 0 else f"answer {n} " + "word " * 20 for n in range(40)))
    plan = select_context(session, "next question", 200, approx, pin_first_exchange=False)
    chosen = sent_ids(plan)
    numbers = [int(i.split("_")[1]) for i in chosen]
    assert numbers == sorted(numbers) and numbers[-1] == 40
    answers = [n for n in numbers if n % 2 == 0]
    assert all(n - 1 in numbers for n in answers)  # every answer sent with its question
    assert plan.omitted and "earlier message(s)" in plan.messages[0]["content"]


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5])
def test_recent_share_is_bounded_when_older_messages_are_relevant(share):
    texts = [f"The churn_threshold for segment {n} is {n / 100:.2f}, set by finance." for n in range(80)]
    texts += [FILLER[n % len(FILLER)] + f" ({n})" for n in range(60)]
    session = session_of(*texts)
    plan = select_context(session, "What churn_threshold did finance set?", 700, approx, recent_share=share, pin_first_exchange=False)
    last_two = {f"msg_{n}" for n in range(137, 141)}
    recent = sum(i.tokens for i in plan.items if i.reason == "recent" and i.message_id not in last_two)
    assert recent <= share * 700
    relevant = [i for i in plan.items if i.reason == "relevant"]
    assert relevant and all("churn_threshold" in m["content"] for m, i in zip(plan.messages, _message_items(plan)) if i.reason == "relevant")


def _message_items(plan):
    return [item for item in plan.items if not item.in_system]


def test_needle_about_a_named_variable_in_a_long_session():
    texts = [FILLER[n % len(FILLER)] + f" (step {n})" for n in range(2000)]
    texts[2] = "Note: orders_df stores the order dates as strings in its `day` column, so parse them before sorting."
    session = session_of(*texts)
    per_message = sum(approx(t) + MESSAGE_OVERHEAD for t in texts) / len(texts)
    budget = int(per_message * 20)
    variables = [VariableSummary("orders_df", "`orders_df`: pandas DataFrame, 120 rows × 3 columns", 12)]
    plan = select_context(session, "Why does sorting orders_df by day give a strange order?", budget, approx, variables=variables)
    assert "msg_3" in sent_ids(plan)
    assert plan.used <= budget and len(sent_ids(plan)) <= 25


def test_pinned_messages_survive_pressure():
    session = filler_session(300)
    plan = select_context(session, "What next?", 150, approx, pinned={"msg_100", "msg_42"})
    reasons = {i.message_id: i.reason for i in plan.items if i.message_id}
    assert reasons["msg_100"] == reasons["msg_42"] == "pinned"
    assert "msg_300" in reasons  # and the conversation's flow still
    plan = select_context(session, "What next?", 400, approx)
    assert {i.message_id: i.reason for i in plan.items}.get("msg_1") == "pinned"  # the first exchange, by default
    plan = select_context(session, "What next?", 400, approx, pin_first_exchange=False)
    assert "msg_1" not in sent_ids(plan)


def test_an_oversized_prompt_is_refused():
    with pytest.raises(PromptTooLarge, match="Shorten it"):
        select_context(filler_session(4), "word " * 500, 300, approx)


def test_history_off_sends_only_context_and_prompt():
    plan = select_context(filler_session(10, context={"k": 1}), "hi", 1000, approx, history=False)
    assert [m["role"] for m in plan.messages] == ["system", "user"] and plan.omitted == []


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("Why did this fail?", True),
        ("What is wrong with the cell above?", True),
        ("I get a traceback, explain it", True),
        ("Summarise the monthly totals", False),
    ],
)
def test_last_error_is_included_when_the_prompt_asks_about_it(prompt, expected):
    notebook = NotebookContext(
        error='Traceback (most recent call last):\n  File "cell", line 2, in <module>\n    df.loc["x"]\nKeyError: \'x\'',
        cells=("df = load()", 'df.loc["x"]'),
    )
    plan = select_context(filler_session(6), prompt, 1000, approx, notebook=notebook)
    system = plan.messages[0]["content"]
    assert ("KeyError: 'x'" in system) is expected
    assert ('df.loc["x"]' in system) is expected
    assert any(i.reason == "error" for i in plan.items) is expected


def test_forced_error_and_cells_and_their_caps():
    notebook = NotebookContext(error="E " * 2000, cells=("a = 1", "b = 2 " * 900, "c = 3"), force_error=True, force_cells=2, error_cap_tokens=50, cell_cap_tokens=40)
    plan = select_context(filler_session(4), "Summarise", 2000, approx, notebook=notebook)
    parts = {i.label: i.tokens for i in plan.items if i.in_system}
    assert set(parts) == {"last error", "cell -2", "cell -1"}
    assert all(tokens <= 60 for tokens in parts.values())
    assert "a = 1" not in plan.messages[0]["content"]


def test_variables_go_to_the_system_message_and_secrets_are_reported():
    variables = [
        VariableSummary("df", "`df`: pandas DataFrame, 3 rows × 2 columns", 10),
        VariableSummary("api_key", "", 0, "`api_key` looks like a secret and was not sent; name it in --vars to send it.", excluded=True),
    ]
    plan = select_context(filler_session(4), "Plot df", 1000, approx, variables=variables)
    assert "`df`: pandas DataFrame" in plan.messages[0]["content"]
    assert [v.name for v in plan.variables] == ["df"]
    assert any("api_key" in w for w in plan.warnings)
    assert "api_key" not in plan.messages[0]["content"]
    assert "`api_key` looks like a secret" in plan.explain()


def test_interrupted_and_failed_answers_are_marked():
    session = session_of("first", "partial answer", "second", "broken answer")
    session["messages"][1]["status"] = "interrupted"
    session["messages"][3]["status"] = "error"
    plan = select_context(session, "go on", 1000, approx)
    assert "[answer incomplete: interrupted]" in plan.messages[1]["content"]
    notes = {i.message_id: i.note for i in plan.items}
    assert notes["msg_2"].startswith("interrupted") and notes["msg_4"].startswith("error")


@pytest.mark.parametrize("budget", [1000, 160])  # the conversation whole, or chosen from
def test_an_earlier_image_is_named_in_its_message_not_sent_again(budget):
    session = filler_session(40)
    session["messages"][-2]["attachments"] = [{"id": "a1", "label": "figure from cell 5", "mime": "image/png"}, {"id": "a2"}]
    plan = select_context(session, "go on", budget, approx)
    sent = next(item.text for item in plan.items if item.message_id == "msg_39")
    assert sent in [message["content"] for message in plan.messages]
    assert sent.endswith("\n\n[image sent earlier: figure from cell 5]\n[image sent earlier: an image]")
    assert all(isinstance(message["content"], str) for message in plan.messages)
    assert recount(plan, approx) <= budget


def with_failures(session: dict, failed_after: dict[str, int]) -> dict:
    """``session`` with ``n`` failed answers (the error the user saw) inserted after each named message."""
    messages = []
    for message in session["messages"]:
        messages.append(message)
        for attempt in range(failed_after.get(message["id"], 0)):
            error = f"openai/x failed with HTTP 500: upstream exploded ({message['id']}, attempt {attempt})"
            messages.append({"id": f"{message['id']}_failed{attempt}", "role": "assistant", "content": error, "status": FAILED})
    return {**session, "messages": messages}


def test_failed_exchanges_never_send_their_prompts_or_errors():
    lost = "Which warehouse ships the frozen salmon to Oslo?"
    filler = [m["content"] for m in filler_session(20)["messages"]]
    # Filler; the lost question (two failures, no answer); filler; a question that a retry
    # answered after one failure; the lost question asked again, failed again.
    texts = (*filler, lost, "(no answer)", *filler, "retried: salmon stock", "Echo: salmon stock", lost)
    session = with_failures(session_of(*texts), {"msg_21": 2, "msg_43": 1, "msg_45": 1})
    session["messages"] = [m for m in session["messages"] if m["id"] != "msg_22"]  # the lost question's only answers are failures
    prompt = "Tell me again about the frozen salmon shipped to Oslo"
    for budget in (200, 5000):  # chosen by relevance, and sent whole
        plan = select_context(session, prompt, budget, approx)
        text = "\n".join(m["content"] for m in plan.messages)
        assert lost not in text and "upstream exploded" not in text
        assert not {"msg_21", "msg_45"} & set(sent_ids(plan)) and not any("failed" in i for i in sent_ids(plan))
        assert text.count("retried: salmon stock") == 1, "a prompt a retry answered is sent once, with its answer"
        assert plan.messages[-1] == {"role": "user", "content": prompt}
    assert {"msg_43", "msg_44"} <= set(sent_ids(select_context(session, prompt, 5000, approx)))


def test_sessions_without_failures_are_chosen_from_as_before():
    session = filler_session(30)
    session["messages"][5]["status"] = "error"
    session["messages"][7]["status"] = "interrupted"
    assert conversation_messages(session) == session["messages"]
    orphan = session_of("a question that was never answered", "another question", roles=("user",))
    assert conversation_messages(orphan) == orphan["messages"], "only a recorded failure takes a prompt out"


def test_the_failed_exchange_a_retry_starts_over_from():
    assert failed_exchange(None) is None and failed_exchange(session_of()) is None
    assert failed_exchange(session_of("q", "a")) is None
    assert failed_exchange(with_failures(session_of("q", "a", "q2"), {"msg_3": 2})) == 2
    broken = session_of("q", "a", "q2", "partial")
    broken["messages"][3]["status"] = "error"
    assert failed_exchange(broken) == 2
    assert failed_exchange(with_failures(session_of("q", "a", "q2", "a2"), {"msg_3": 1})) is None  # q2, its failure, the retry's answer
    assert failed_exchange(with_failures(session_of("q", "a"), {"msg_2": 1})) == 0  # a failure after an answer


def test_relevance_by_meaning_uses_the_vectors_given():
    session = filler_session(200)
    session["messages"][10]["content"] = "The raw extracts sit in an S3 bucket refreshed each Monday."
    vectors = {m["id"]: [1.0, 0.0] for m in session["messages"]}
    vectors["msg_11"] = [0.0, 1.0]
    plan = select_context(session, "Where is the source data kept?", 300, approx, vectors=(vectors, [0.1, 1.0]))
    assert "msg_11" in sent_ids(plan)
    assert "meaning (embeddings)" in " ".join(plan.notes)
    lexical_only = select_context(session, "Where is the source data kept?", 300, approx)
    assert "msg_11" not in sent_ids(lexical_only)
    assert "words only" in " ".join(lexical_only.notes)


def test_a_conversation_that_fits_goes_whole_and_says_so_beforehand():
    long_answer = " ".join(f"Sentence {n} is about colours." for n in range(30))
    session = session_of("Plot the prices", long_answer, "And the volumes?", "Use a bar chart.")
    assert start_selection(session, "Which colours again?", 2000, approx).fits  # so a caller computes no embeddings
    plan = select_context(session, "Which colours again?", 2000, approx, pinned={"msg_2"})
    assert plan.omitted == []
    assert {item.message_id: item.reason for item in plan.items if item.message_id}["msg_2"] == "pinned"
    assert [m["content"] for m in plan.messages[:-1]] == [m["content"] for m in session["messages"]]
    assert not start_selection(session, "Which colours again?", 120, approx).fits
    tight = select_context(session, "Which colours again?", 120, approx)
    assert long_answer not in [m["content"] for m in tight.messages]


def test_long_relevant_message_is_cut_to_its_relevant_part():
    long_answer = " ".join(f"Sentence {n} talks about plotting and colours in some detail." for n in range(60))
    long_answer += " The warehouse cannot ship more than 4,000 pallets a week. " + long_answer
    session = session_of(*([long_answer] + [FILLER[n % 6] for n in range(50)]), roles=("assistant", "user"))
    plan = select_context(session, "How many pallets can the warehouse ship?", 300, approx, pin_first_exchange=False)
    item = next(i for i in plan.items if i.message_id == "msg_1")
    text = plan.messages[[i for i in plan.items if not i.in_system].index(item)]["content"]
    assert "4,000 pallets" in text and "[…]" in text and item.tokens < 120
    assert "passages" in item.note


def test_a_repeated_sentence_is_not_sent_twice():
    texts = ["The seed is 2718 for every run." if n % 10 == 0 else FILLER[n % 6] + f" {n}" for n in range(200)]
    plan = select_context(session_of(*texts), "Which seed do we use?", 400, approx, pin_first_exchange=False, recent_share=0)
    relevant = [m["content"] for m, i in zip(plan.messages, _message_items(plan)) if i.reason == "relevant"]
    assert sum("2718" in c for c in relevant) == 1


def test_a_stale_index_is_rebuilt_not_trusted():
    session = filler_session(50)
    stale = LexicalIndex(conversation_messages(session)[:10])
    fresh = select_context(session, "merge frames", 300, approx)
    reused = select_context(session, "merge frames", 300, approx, lexical_index=stale)
    assert sent_ids(fresh) == sent_ids(reused)


def test_explanation_lists_every_choice():
    plan = select_context(filler_session(100, context={"user": "Alex"}), "How do I merge frames?", 400, approx)
    table = plan.explain()
    assert table.startswith("| # | role | why | message | tokens | note |")
    assert re.search(r"\| relevant \(\d\.\d\d\) \|", table) and "| pinned |" in table and "| prompt |" in table
    assert f"**{plan.used} of 400 tokens used; {len(plan.omitted)} earlier messages left out.**" in table
    assert "<div class='oblix-plan'>" in plan.explain_html() and set(plan._repr_mimebundle_()) == {"text/plain", "text/html"}


roles = st.sampled_from(["user", "assistant", "system"])
texts = st.lists(st.sampled_from(["alpha", "beta", "gamma", "df", "plot", "x_1", "error", "."]), min_size=0, max_size=60).map(" ".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(st.tuples(roles, texts, st.sampled_from([None, "error", "interrupted"])), max_size=40),
    prompt=texts.filter(bool),
    budget=st.integers(min_value=1, max_value=600),
    share=st.floats(min_value=0, max_value=1),
    pins=st.sets(st.integers(min_value=1, max_value=40), max_size=4),
    vectors=st.booleans(),
)
def test_property_within_budget_chronological_prompt_last(messages, prompt, budget, share, pins, vectors):
    session = {
        "messages": [
            {"id": f"msg_{n + 1}", "role": role, "content": text, **({"status": status} if status else {})}
            for n, (role, text, status) in enumerate(messages)
        ],
        "context": {"topic": "tests"},
    }
    options = {}
    if vectors:
        table = {m["id"]: [len(m["content"]) % 7, 1.0] for m in session["messages"]}
        options = {"vectors": (table, [1.0, 0.5])}
    try:
        plan = select_context(session, prompt, budget, approx, recent_share=share, pinned={f"msg_{p}" for p in pins}, **options)
    except PromptTooLarge:
        assert approx(prompt) + MESSAGE_OVERHEAD > budget - 10 or budget < 80
        return
    assert plan.used == recount(plan, approx) <= budget
    assert plan.messages[-1] == {"role": "user", "content": prompt}
    numbers = [int(i.split("_")[1]) for i in sent_ids(plan)]
    assert numbers == sorted(set(numbers))
    assert len(plan.omitted) + len(numbers) == len(conversation_messages(session))


@pytest.mark.parametrize("budget", [120, 400])
def test_messages_from_several_days_carry_the_day_once_per_day_within_the_budget(budget):
    """A question about "when" needs the dates of the older messages it is shown; each day is said once."""
    count = functools.partial(litellm_count, "gpt-4o-mini")
    session = filler_session(60)
    for number, message in enumerate(session["messages"]):
        message["timestamp"] = f"2024-03-{1 + number // 20:02d}T09:{number % 60:02d}:00.000Z"  # three days, 20 each
    session["messages"][5]["content"] = "The churn model was retrained with the March data."
    plan = select_context(session, "When was the churn model retrained?", budget, count)
    assert plan.used == recount(plan, count) <= budget
    sent = [message["content"] for message in plan.messages if message["role"] != "system"]
    marks = [re.match(r"\[(\d+) March 2024\] ", text) for text in sent[:-1]]
    days = [1 + (int(item.message_id.split("_")[1]) - 1) // 20 for item in plan.items if item.message_id]
    assert [mark and int(mark.group(1)) for mark in marks] == [day if n == 0 or day != days[n - 1] else None for n, day in enumerate(days)]
    assert any("retrained" in text for text in sent)

    one_day = filler_session(60)
    for message in one_day["messages"]:
        message["timestamp"] = "2024-03-01T09:00:00.000Z"
    assert not any(message["content"].startswith("[") for message in select_context(one_day, "When?", budget, count).messages)


def test_an_earlier_question_to_the_model_is_no_evidence_but_its_answer_and_stated_facts_are():
    texts = [FILLER[n % len(FILLER)] + f" (step {n})" for n in range(400)]
    texts[10] = "Which seed did we use for the train test split of orders_df?"  # asked before, answered by a model
    texts[11] = "No seed was chosen then."
    texts[40] = "Which seed did we use for the train test split of orders_df?"  # the same question, in a human's turn
    texts[41] = "I think it was the default."
    texts[70] = "Note: the train test split of orders_df used seed 2718."
    session = session_of(*texts)
    session["messages"][11]["model"] = "openai/gpt-4o-mini"
    budget = int(sum(approx(t) + MESSAGE_OVERHEAD for t in texts) / len(texts) * 12)
    plan = select_context(session, "Which seed did we use for the train test split of orders_df?", budget, approx)
    sent = sent_ids(plan)
    assert "msg_71" in sent and "msg_41" in sent
    assert "msg_11" not in sent, "the question already put to the model is not evidence"


TOMATOES = "How many tomatoes did I plant in the garden?"


def garden(days: bool) -> dict:
    """120 messages whose first sentence answers the prompt: each is sent as that passage and a ``[…]``."""
    messages = []
    for n in range(120):
        text = (
            f"I planted {n + 3} tomatoes in the garden bed. The weather on day {n} was grey and windy again. "
            f"Then I took the long way home past the river number {n}."
        )
        day = 1 + (n // 4 if days else 0)
        messages.append({"id": f"m{n}", "role": "user" if n % 2 == 0 else "assistant", "content": text, "timestamp": f"2024-03-{day:02d}T10:00:00Z"})
    return {"id": "s", "messages": messages, "context": {}}


@pytest.mark.parametrize("days", [False, True], ids=["one day", "a day's mark every four messages"])
@pytest.mark.parametrize("budget", [1000, 2000])
def test_passages_fill_the_room_as_they_are_sent(days, budget):
    """A fixed allowance per passage (the old way) left 63 and 103 tokens of these windows unused on one day."""
    count = functools.partial(litellm_count, "gpt-4o-mini")
    plan = select_context(garden(days), TOMATOES, budget, count, pin_first_exchange=False)
    assert plan.used == recount(plan, count) <= budget
    assert budget - plan.used < MIN_PIECE  # no passage would have fitted in what is left
    cut = [item for item in plan.items if item.cut]
    assert len(cut) >= 10 and all(item.text.count("[…]") == 1 for item in cut)
    if days:
        assert sum(item.text.startswith("[") and "March 2024]" in item.text for item in plan.items) > len(cut) // 5


def lumpy(text: str) -> int:
    """Words, and a long text dearer than its parts: some tokenizers count a joined text above the sum of its pieces."""
    return len(text.split()) + (30 if len(text) > 150 else 0)


def test_a_short_question_that_came_with_the_best_passage_is_not_the_first_thing_shed():
    """When the sent text counts above what was measured, the least relevant go first, not the partners of the best.

    The partner came along because its passage was strongly relevant: it is shed with that
    relevance. Before, it had none, and was the first thing shed.
    """
    messages = []
    for n in range(60):
        messages.append({"id": f"u{n}", "role": "user", "content": f"Was walk {n} by the pond a long one?"})
        messages.append({"id": f"a{n}", "role": "assistant", "content": f"Walk {n} went round the pond."})
    needle = (
        "I saw seven herons by the old mill pond this morning. Herons stand so still at the mill pond that you miss them. "
        "The dog chased a duck into the reeds and came back soaked. Seven herons at one pond is the most I have ever seen."
    )
    messages[50:50] = [{"id": "guess", "role": "user", "content": "Guess what I saw today?"}, {"id": "needle", "role": "assistant", "content": needle}]
    plan = select_context({"id": "s", "messages": messages, "context": {}}, "How many herons did I see by the old mill pond?", 240, lumpy, pin_first_exchange=False)
    sent = {item.message_id: item for item in plan.items if item.message_id}
    assert sent["needle"].cut and len(sent["needle"].text) > 150  # three short passages, joined: counted 30 above their parts
    assert plan.used <= 240
    assert sent["guess"].reason == "neighbour"
    assert min(item.score for item in sent.values() if item.reason == "relevant") < sent["guess"].score
