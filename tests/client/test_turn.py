"""A turn's result: the ``TurnResult`` dataclass, and the SDK-shaped dict built from it in one place."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest
from conftest import TEST_MODEL

from oblix_jupyter import OblixClient
from oblix_jupyter.context.selector import ContextPlan
from oblix_jupyter.turn import TurnResult

FRONTENDS = pathlib.Path(__file__).resolve().parents[2] / "oblix_jupyter" / "frontends"
# The seed's result, as its README and the SDK's callers read it: every key, and no other.
SEED_KEYS = {
    "response", "session_id", "session_title", "message_id", "model", "status",
    "usage", "cost", "tools", "failed_models", "notice", "plan",
}  # fmt: skip


@pytest.fixture
def client(model_env):
    opened = OblixClient()
    yield opened
    opened.wait_for_background()


def fields_the_front_ends_read() -> tuple[set[str], set[str]]:
    """Every field a front end reads of a turn's result (``result.field``), and every key it reads as a dict's."""
    attributes, keys = set(), set()
    for path in FRONTENDS.glob("*.py"):
        text = path.read_text()
        attributes |= set(re.findall(r"\bresult\.(\w+)", text))
        keys |= set(re.findall(r"""\bresult(?:\[|\.get\()["'](\w+)["']""", text))
    return attributes, keys


def test_the_dict_has_exactly_the_seeds_keys_and_front_ends_read_the_typed_fields(client):
    result = client.turn("Hello", client.create_session_sync(title="keys"))

    assert {field.name for field in dataclasses.fields(TurnResult)} == SEED_KEYS
    assert set(result.as_dict()) == SEED_KEYS
    attributes, keys = fields_the_front_ends_read()
    assert {"response", "model", "notice", "plan", "failed_models", "usage", "session_id"} <= attributes, "the scan found the front ends' reads"
    assert attributes <= SEED_KEYS, f"front ends read fields a turn never gives: {attributes - SEED_KEYS}"
    assert not keys, f"front ends read a turn's result as the SDK's dict: {keys}"


def test_a_turn_through_the_model_server_returns_a_turn_result_and_execute_its_dict(client, server):
    session_id = client.create_session_sync(title="typed")
    heard: list[str] = []

    result = client.turn("What is two and two?", session_id, stream_to=heard.append)

    assert isinstance(result, TurnResult)
    assert result.response == "Echo: What is two and two?" == "".join(heard)
    assert (result.session_id, result.session_title, result.message_id) == (session_id, "typed", "msg_2")
    assert (result.model, result.status, result.failed_models, result.tools, result.notice) == (TEST_MODEL, "complete", [], [], None)
    assert result.usage["prompt_tokens"] > 0 and result.usage["completion_tokens"] > 0
    assert isinstance(result.plan, ContextPlan) and result.plan.messages[-1]["content"] == "What is two and two?"
    stored = client.load_session(session_id)["messages"]
    assert [(m["id"], m["content"]) for m in stored] == [("msg_1", "What is two and two?"), ("msg_2", result.response)]

    client.current_session_id = session_id
    answer = client.execute_sync("And three and three?")  # the seed's call: a dict, in the current session
    assert set(answer) == SEED_KEYS and answer["session_id"] == session_id and answer["message_id"] == "msg_4"
    assert answer["response"] == "Echo: And three and three?" and isinstance(answer["plan"], ContextPlan)
    assert [r["messages"][-1]["content"] for r in server.chat_requests()] == ["What is two and two?", "And three and three?"]


def test_a_turn_without_a_session_stores_nothing_and_says_so_in_its_result(client, tmp_path):
    result = client.turn("Just once")

    assert result.response == "Echo: Just once"
    assert (result.session_id, result.session_title, result.message_id) == (None, None, None)
    assert client.list_sessions() == []


def test_a_misspelt_option_is_refused_before_anything_is_stored_or_sent(client, server):
    session_id = client.create_session_sync(title="options")

    with pytest.raises(TypeError, match="histroy"):
        client.execute_sync("Hello", session_id, histroy=False)

    assert client.load_session(session_id)["messages"] == []
    assert server.chat_requests() == []
