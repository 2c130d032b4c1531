"""Tool rounds in the gateway: real litellm over HTTP to the loopback server, a real Python tool."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from conftest import TEST_KEY, TEST_MODEL
from model_server import LOOK, Behavior, ToolCall

from oblix_jupyter.errors import ModelError
from oblix_jupyter.models import local_model
from oblix_jupyter.models.gateway import ModelGateway, ToolRunner, supports_tools

MESSAGES = [{"role": "user", "content": "How many rows has df?"}]
VARIABLES = {"df": "DataFrame, 3 rows x 2 columns (a, b)"}
BACKUP = "openai/backup"


@dataclass(frozen=True)
class Looked:
    """A tool's outcome, shaped as the kernel's ToolResult is."""

    text: str
    summary: str
    ok: bool
    parts: tuple = ()
    kept: dict | None = None


def look(name: str, arguments: str) -> Looked:
    """The tool the scripted model calls: describes a variable, or says there is none."""
    wanted = json.loads(arguments)["name"]
    return Looked(VARIABLES.get(wanted, f"no variable named {wanted}"), f"looked at {wanted}", wanted in VARIABLES)


def look_at(name: str, call_id: str | None = None) -> ToolCall:
    return ToolCall("look", {"name": name}, id=call_id)


class CountedLook:
    """The look tool, remembering every call it ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str, arguments: str) -> Looked:
        self.calls.append((name, arguments))
        return look(name, arguments)


@pytest.fixture
def gateway(server):
    """A gateway whose test models reach the loopback server and are said to call tools."""
    options = {"api_base": server.url, "api_key": TEST_KEY, "supports_tools": True}
    return ModelGateway(model_options={TEST_MODEL: options, BACKUP: options})


def test_a_tool_round_runs_the_tool_and_sends_back_its_result(gateway, server):
    server.enqueue(
        Behavior(tool_calls=[look_at("df", "call_1")], prompt_tokens=10, completion_tokens=4),
        Behavior(reply="df has 3 rows.", prompt_tokens=30, completion_tokens=5),
    )
    heard: list[dict] = []
    completion = gateway.complete([TEST_MODEL], MESSAGES, tools=ToolRunner([LOOK], look, on_tool=heard.append))
    assert (completion.text, completion.status, completion.model) == ("df has 3 rows.", "complete", TEST_MODEL)
    record = {"name": "look", "arguments": '{"name": "df"}', "summary": "looked at df", "ok": True, "result": VARIABLES["df"]}
    assert completion.tool_calls == heard == [record]
    assert (completion.prompt_tokens, completion.completion_tokens) == (40, 9)  # summed over both requests
    asked, answered = server.chat_requests()
    assert asked["tools"] == [LOOK] and "supports_tools" not in asked  # the gateway's own option stays with it
    assert answered["messages"][: len(MESSAGES)] == MESSAGES
    call = answered["messages"][-2]
    assert call["role"] == "assistant" and not call.get("content")
    assert call["tool_calls"] == [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"name": "df"}'}}]
    assert answered["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": VARIABLES["df"]}


def test_parallel_calls_are_each_answered_under_their_id(gateway, server):
    server.enqueue(Behavior(tool_calls=[look_at("df", "call_a"), look_at("x", "call_b")]), Behavior(reply="Only df exists."))
    completion = gateway.complete([TEST_MODEL], MESSAGES, tools=ToolRunner([LOOK], look))
    assert [(r["summary"], r["ok"]) for r in completion.tool_calls] == [("looked at df", True), ("looked at x", False)]
    answers = [m for m in server.chat_requests()[1]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in answers] == [("call_a", VARIABLES["df"]), ("call_b", "no variable named x")]
    assert completion.text == "Only df exists."


def test_the_round_limit_makes_the_last_request_without_tools(gateway, server):
    server.default = Behavior(tool_calls=[look_at("df")])  # a model that would look for ever
    server.enqueue(Behavior(tool_calls=[look_at("df")]), Behavior(tool_calls=[look_at("df")]), Behavior(reply="3 rows."))
    completion = gateway.complete([TEST_MODEL], MESSAGES, tools=ToolRunner([LOOK], look, max_rounds=3))
    assert ["tools" in body for body in server.chat_requests()] == [True, True, False]
    assert (completion.text, completion.status, len(completion.tool_calls)) == ("3 rows.", "complete", 2)


def test_calls_asked_for_in_the_request_without_tools_are_not_run(gateway, server):
    server.default = Behavior(reply="I would look again.", tool_calls=[look_at("df")])
    counted = CountedLook()
    completion = gateway.complete([TEST_MODEL], MESSAGES, tools=ToolRunner([LOOK], counted, max_rounds=2))
    assert len(server.chat_requests()) == 2 and len(counted.calls) == len(completion.tool_calls) == 1
    assert completion.text == "I would look again.\n\nI would look again."


def test_a_tool_that_raises_tells_the_model_in_one_line_and_the_turn_goes_on(gateway, server):
    def broken(name: str, arguments: str) -> Looked:
        raise ValueError("cannot read df\nTraceback (most recent call last): ...")

    server.enqueue(Behavior(tool_calls=[look_at("df", "call_1")]), Behavior(reply="I could not look at df."))
    completion = gateway.complete([TEST_MODEL], MESSAGES, tools=ToolRunner([LOOK], broken))
    assert (completion.text, completion.status) == ("I could not look at df.", "complete")
    failure = "tool failed: ValueError: cannot read df"
    assert server.chat_requests()[1]["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": failure}
    assert [(r["ok"], r["summary"], r["result"]) for r in completion.tool_calls] == [(False, failure, failure)]


def test_text_before_and_after_a_tool_streams_in_order(gateway, server):
    server.enqueue(Behavior(reply="Let me look at df.", tool_calls=[look_at("df")]), Behavior(reply="It has 3 rows."))
    events: list[str] = []
    tools = ToolRunner([LOOK], look, on_tool=lambda record: events.append(f"[{record['summary']}]"))
    completion = gateway.complete([TEST_MODEL], MESSAGES, on_text=events.append, tools=tools)
    assert "".join(events) == "Let me look at df.[looked at df]\n\nIt has 3 rows."
    assert len(events) > 3  # streamed piece by piece, not handed over whole
    assert completion.text == "Let me look at df.\n\nIt has 3 rows."
    assert server.chat_requests()[1]["messages"][-2]["content"] == "Let me look at df."  # as the model said it


def test_ctrl_c_in_a_later_round_keeps_the_text(gateway, server):
    server.enqueue(Behavior(reply="Looking.", tool_calls=[look_at("df")]), Behavior(reply="one two three four five", token_delay=0.02))
    seen: list[str] = []

    def on_text(text: str) -> None:
        seen.append(text)
        if text == "two ":
            raise KeyboardInterrupt

    completion = gateway.complete([TEST_MODEL], MESSAGES, on_text=on_text, tools=ToolRunner([LOOK], look))
    assert (completion.status, completion.text, len(completion.tool_calls)) == ("interrupted", "Looking.\n\none two ", 1)


def test_stop_after_a_tool_ran_asks_no_more(gateway, server):
    server.enqueue(Behavior(reply="Looking.", tool_calls=[look_at("df")]), Behavior(reply="never asked for"))
    heard: list[dict] = []
    tools = ToolRunner([LOOK], look, on_tool=heard.append)
    completion = gateway.complete([TEST_MODEL], MESSAGES, should_stop=lambda: bool(heard), tools=tools)
    assert (completion.status, completion.text) == ("interrupted", "Looking.")
    assert len(server.chat_requests()) == 1


def test_a_failure_after_a_tool_ran_ends_the_turn_with_the_text_kept(gateway, server):
    server.enqueue(Behavior(reply="Looking.", tool_calls=[look_at("df")]), Behavior(status=500))
    with pytest.raises(ModelError) as info:
        gateway.complete([TEST_MODEL, BACKUP], MESSAGES, tools=ToolRunner([LOOK], look))
    assert info.value.partial == "Looking." and info.value.model == TEST_MODEL
    assert [body["model"] for body in server.chat_requests()] == ["test-model", "test-model"]  # no fallback mid-turn


def test_a_failure_before_anything_happened_still_falls_back(gateway, server):
    server.enqueue(Behavior(status=500), Behavior(tool_calls=[look_at("df")]), Behavior(reply="3 rows."))
    completion = gateway.complete([TEST_MODEL, BACKUP], MESSAGES, tools=ToolRunner([LOOK], look))
    assert (completion.model, completion.text, len(completion.tool_calls)) == (BACKUP, "3 rows.", 1)
    assert [body["model"] for body in server.chat_requests()] == ["test-model", "backup", "backup"]


def test_a_model_without_tool_support_is_offered_none(server):
    gateway = ModelGateway(model_options={TEST_MODEL: {"api_base": server.url, "api_key": TEST_KEY}})
    counted = CountedLook()
    completion = gateway.complete([TEST_MODEL], MESSAGES, tools=ToolRunner([LOOK], counted))
    assert completion.text == "Echo: How many rows has df?" and not completion.tool_calls and not counted.calls
    assert "tools" not in server.chat_requests()[0]


def test_which_models_are_offered_tools(monkeypatch):
    assert supports_tools("openai/gpt-4o-mini")  # litellm's model map says so
    assert not supports_tools("openai/gpt-4o-mini", {"supports_tools": False})
    assert not supports_tools(TEST_MODEL)  # an endpoint litellm has no entry for
    assert supports_tools(TEST_MODEL, {"supports_tools": True, "api_base": "http://127.0.0.1:1/v1"})
    monkeypatch.setenv("OBLIX_TOOL_MODELS", f"ollama_chat/qwen3, {TEST_MODEL}")
    assert supports_tools(TEST_MODEL) and supports_tools("ollama_chat/qwen3")
    assert not supports_tools(local_model.LOCAL_MODEL, {"supports_tools": True})  # the offline model never
