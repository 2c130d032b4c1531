"""``--explain``: every row opens on the exact text sent, and the totals add up to what the footer says.

A model that calls tools is sent the plan again with every request, followed by the
calls and results of the rounds before it; the footer's "tokens in" is the sum over
those requests. These tests run real turns against the loopback server and read what
it was really sent, then check the explanation against it.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys

import pytest
from kernels import run_cells
from model_server import Behavior, ToolCall

from oblix_jupyter.client import OblixClient
from oblix_jupyter.context.selector import ContextPlan, PlanItem, select_context
from oblix_jupyter.frontends.display import PlanView
from oblix_jupyter.redaction import WITHHELD

pytestmark = pytest.mark.timeout(180)
LOAD = "%load_ext oblix_jupyter"
HOSTILE = "<img src=http://127.0.0.1:1/x onerror=alert(1)>"
SECRET = "sk-live-abcdef0123456789"
DATA = f"note = {HOSTILE!r}\napi_key = {SECRET!r}"


def approx(text: str) -> int:
    return len(text.split())


def opened(rich: str) -> list[tuple[str, str]]:
    """(what the row is, the text it opens on), unescaped, for every row of an explanation's HTML."""
    rows = re.findall(r"<summary>.*?<span class='oblix-plan-what'>(.*?)</span>.*?</summary><pre>(.*?)</pre></details>", rich, re.DOTALL)
    return [(html.unescape(what), html.unescape(text)) for what, text in rows]


def cell_bundles(cell) -> list[dict]:
    return [output["data"] for output in cell["outputs"] if output.get("output_type") in ("display_data", "execute_result")]


def request_rows(text: str) -> list[tuple[int, int, int, int]]:
    """(request, last row, tokens counted here, tokens the server counted) from the explanation's request lines."""
    found = re.findall(r"request (\d+) \(rows 1–(\d+)\): ([\d,]+) tokens counted here, ([\d,]+) by the model's server", text)
    return [tuple(int(value.replace(",", "")) for value in row) for row in found]


def table_tokens(plain: str) -> dict[int, tuple[str, int]]:
    """Row number -> (why, tokens) from the Markdown table of the plain explanation."""
    rows = {}
    for line in plain.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            rows[int(cells[0])] = (cells[2], int(cells[4]))
    return rows


def test_a_turn_with_a_tool_round_adds_up_to_the_footer_and_each_row_opens_on_its_text(tool_model, tmp_path):
    server = tool_model
    # The server's own counts, distinct from any tokenizer's, so that the explanation can only quote them.
    server.enqueue(
        Behavior(tool_calls=[ToolCall("list_variables")], prompt_tokens=517),
        Behavior(reply="`note` holds an HTML snippet.", prompt_tokens=733),
    )
    prompt = f"What is in note? It looks like {HOSTILE}"
    client = run_cells([DATA, LOAD, f"%%oblix --explain --vars api_key\n{prompt}"], str(tmp_path / "nb" / "explain.ipynb"))
    first, second = server.chat_requests()[-2:]
    assert SECRET in first["messages"][0]["content"], "the secret named with --vars was sent, on purpose"
    call, result = second["messages"][-2:]
    assert call["tool_calls"][0]["function"]["name"] == "list_variables" and result["role"] == "tool"
    assert HOSTILE in result["content"], "the tool result the model read holds the hostile text"

    answer, plan = cell_bundles(client.nb.cells[2])[-2:]
    footer = re.search(r"([\d,]+) tokens in, \d+ out", answer["text/plain"])
    assert footer and int(footer.group(1)) == 517 + 733
    rich, plain = plan["text/html"], plan["text/plain"]
    for shown in (rich, plain):
        assert "1,250 tokens in over 2 requests, as the model's server counted them (the footer's figure)" in html.unescape(shown)
        assert "message(s)" not in shown and "0 earlier" not in shown and "left out" not in shown, "nothing was left out: nothing said"
        assert SECRET not in shown, "the secret named for the turn is not kept in the notebook's output"

    # Each request: the context, then (for the second) the tool round; our counts add up row by row.
    rows = table_tokens(plain)
    (one, last_one, ours_one, theirs_one), (two, last_two, ours_two, theirs_two) = request_rows(html.unescape(plain))
    assert (one, two, theirs_one, theirs_two) == (1, 2, 517, 733)
    assert [rows[n][0] for n in range(last_one + 1, last_two + 1)] == ["tool call", "tool result"]
    assert rows[last_one][0] == "prompt" and last_two == len(rows)
    context = sum(tokens for n, (why, tokens) in rows.items() if n <= last_one and why not in ("variable", "error", "cells"))
    assert ours_one == context and ours_two == context + rows[last_two - 1][1] + rows[last_two][1]

    # Every row opens on exactly what was sent, escaped: the tool call, its result, the prompt.
    texts = opened(rich)
    assert len(texts) == len(rows)
    sent = [text for _, text in texts]
    assert sent[last_one - 1] == prompt and sent[-1] == result["content"].replace(SECRET, WITHHELD)
    assert texts[-2] == ("list_variables", "list_variables({})") and texts[-1][0] == "list_variables"
    assert sent[0] == first["messages"][0]["content"].replace(SECRET, WITHHELD)
    assert "<img" not in rich and "&lt;img src=http://127.0.0.1:1/x onerror=alert(1)&gt;" in rich
    assert "What each row sent:" in plain and "    " + prompt in plain


def test_without_tools_the_one_request_is_the_footers_figure(model_env):
    model_env.enqueue(Behavior(reply="fine", prompt_tokens=321))
    client = OblixClient()
    session_id = client.create_session_sync(title="plain")
    client.execute_sync("first question", session_id)
    model_env.enqueue(Behavior(reply="fine again", prompt_tokens=345))
    result = client.execute_sync("second question", session_id)
    plan = result["plan"]
    assert result["usage"]["prompt_tokens"] == 345
    text = plan.explain()
    assert f"345 tokens in, as the model's server counted them (the footer's figure); {plan.used} counted here." in text
    assert "request 1" not in text and "left out" not in text
    rich = PlanView(plan)._repr_mimebundle_()["text/html"]
    assert opened(rich) == [("msg_1", "first question"), ("msg_2", "fine"), ("the prompt", "second question")]
    client.wait_for_background()


def test_left_out_messages_are_counted_in_words_and_hostile_rows_stay_text():
    session = {"messages": [{"id": f"msg_{n}", "role": "user" if n % 2 == 0 else "assistant", "content": f"word {n} " * 40} for n in range(12)]}
    plan = select_context(session, "which word?", 300, approx)
    assert len(plan.omitted) > 1
    assert f"; {len(plan.omitted)} earlier messages left out." in plan.explain()
    prompt = PlanItem("user", "prompt", 5, text="which word?")
    one = ContextPlan([{"role": "user", "content": "which word?"}], lambda: [prompt], 300, list_omitted=lambda: ["msg_0"])
    assert "**5 of 300 tokens used; 1 earlier message left out.**" in one.explain()

    plan.add_requests(
        [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": HOSTILE, "arguments": '{"x": "</pre><script>alert(1)</script>"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": f"</pre></details>{HOSTILE}"},
        ],
        [(len(plan.messages), 100, False), (len(plan.messages) + 2, 160, False)],
        approx,
    )
    rich = plan.explain_html()
    assert "<script" not in rich and "<img" not in rich and rich.count("</pre>") == rich.count("<pre>") == len(plan.items) + 2
    assert "260 tokens in over 2 requests, as litellm counted them (the footer's figure)" in html.unescape(rich)
    assert "definitions of the tools" not in rich, "litellm's own count has no chat format to explain"


def earlier_sent(request: dict) -> list[dict]:
    """A request's earlier messages: all but the system message and the prompt."""
    return [message for message in request["messages"][:-1] if message["role"] != "system"]


def record_ids(part: str) -> list[str]:
    """The message ids a part of an answer's ``sent …`` line names, runs unfolded."""
    ids = []
    for first, last in re.findall(r"\bmsg_(\d+)(?:-(\d+))?", part):
        ids += [f"msg_{n}" for n in range(int(first), int(last or first) + 1)]
    return ids


def test_show_explain_in_a_fresh_process_names_what_the_server_received_for_each_answer(model_env, tmp_path):
    # A window of a few hundred tokens: the later turns cannot send the whole conversation, so each sends a choice.
    client = OblixClient(max_input_tokens=420, semantic=False)
    session_id = client.create_session_sync(title="record")
    variables = {"prices": list(range(40)), "city": "Lyon"}
    from oblix_jupyter.kernel.variables import summarize_variables

    for number in range(1, 8):
        prompt = f"question {number}: what about the {'prices' if number % 3 == 0 else 'weather'} in city {number}? " + "detail " * 12
        model_env.enqueue(Behavior(reply=f"answer {number}: " + "words " * 25))
        client.execute_sync(prompt, session_id, max_tokens=64, variables=summarize_variables(variables, prompt))
    client.wait_for_background()
    requests = model_env.chat_requests()[-7:]
    session = client.get_session(session_id)

    shown = subprocess.run(
        [sys.executable, "-m", "oblix_jupyter.frontends.cli", "show", session_id[:8], "--explain"],
        capture_output=True, text=True, timeout=90, env=dict(os.environ),
    )
    assert shown.returncode == 0, shown.stderr
    lines = [line.strip("*") for line in shown.stdout.splitlines() if line.startswith("*sent ") or line.startswith("*no earlier")]
    assert len(lines) == 7, shown.stdout
    by_text = {message["content"]: message["id"] for message in session["messages"]}
    left_out_somewhere = False
    for request, line in zip(requests, lines):
        parts = line.split(" · ")
        named = record_ids(parts[0])
        cut = record_ids(next((part for part in parts if part.startswith("cut: ")), ""))
        whole = [by_text[message["content"]] for message in earlier_sent(request) if message["content"] in by_text]
        assert sorted(whole) == sorted(set(named) - set(cut)), line  # the messages sent whole, exactly
        assert len(earlier_sent(request)) == len(named), line  # and as many cut ones as it says
        system = request["messages"][0]["content"] if request["messages"][0]["role"] == "system" else ""
        for name in variables:
            assert (f"{name} (" in line) == (f"`{name}`" in system or f"{name}:" in system), (name, line)
        left_out_somewhere |= "earlier left out" in line
    assert left_out_somewhere, "the window was small enough that some turn left messages out"
    answers = [message for message in session["messages"] if message["role"] == "assistant"]
    assert all(len(json.dumps(answer["sent"])) < 400 for answer in answers), [answer["sent"] for answer in answers]


def test_oblix_show_explain_opens_each_answers_record_and_plain_text_prints_it(tmp_path):
    from oblix_jupyter.frontends.display import Conversation
    from oblix_jupyter.sessions import SessionManager

    store = SessionManager(str(tmp_path / "store"))
    session_id = store.create_session(title="shown")
    store.save_message(session_id, "question")
    store.save_message(session_id, "answer", role="assistant", sent={"v": 1, "messages": {"recent": ["msg_1"]}, "used": 9, "budget": 100})
    session = store.get_session(session_id)

    plain_view = Conversation(session)._repr_mimebundle_()
    explained = Conversation(session, explain=True)._repr_mimebundle_()
    assert "class='oblix-sent'" not in plain_view["text/html"] and "sent msg_1" not in plain_view["text/plain"]
    assert "<details class='oblix-sent' open><summary>what it was sent</summary>sent msg_1 (recent) · 9 of 100 tokens</details>" in explained["text/html"]
    assert "answer\n(sent msg_1 (recent) · 9 of 100 tokens)" in explained["text/plain"]
