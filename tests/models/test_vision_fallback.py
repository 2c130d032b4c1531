"""Images given to each model of the chain as it can take them: real litellm over HTTP to the loopback server, real PNGs.

The requests the server received are what the models were sent: a model that sees gets
the image part (without what only the gateway reads), any other gets the note, and the
bytes never reach it, whether the image came with the prompt or from a tool.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from conftest import TEST_KEY, TEST_MODEL
from model_server import Behavior, ToolCall
from PIL import Image

from oblix_jupyter import OblixClient
from oblix_jupyter.kernel.images import NotebookImage
from oblix_jupyter.kernel.tools import ToolResult
from oblix_jupyter.models.gateway import IMAGE_ABOUT, ModelGateway, ToolRunner, image_part
from oblix_jupyter.models.images import cannot_see_note, prepare
from oblix_jupyter.sessions import SessionManager

BLIND = "openai/text-only"
NOTE = "[a 800×600 figure from cell 5: this model cannot see images]"
SHOW = {
    "type": "function",
    "function": {"name": "show_figure", "description": "See a figure.", "parameters": {"type": "object", "properties": {}}},
}
LOOK = {
    "type": "function",
    "function": {"name": "look", "description": "Describe a variable.", "parameters": {"type": "object", "properties": {}}},
}


def figure_png(width: int = 800, height: int = 600) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def figure_part() -> dict:
    ready = prepare(figure_png(), "image/png")
    return image_part(ready.content_part(), "figure from cell 5", cannot_see_note("figure from cell 5", ready.width, ready.height))


def asked_with_figure() -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "Why does it bend?"}, figure_part()]}]


def image_parts(request: dict) -> list[dict]:
    return [
        part for message in request["messages"] if isinstance(message.get("content"), list)
        for part in message["content"] if part.get("type") == "image_url"
    ]


def decoded(part: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].partition(",")[2])))


def carries_no_image(request: dict) -> bool:
    return "image_url" not in json.dumps(request) and "base64," not in json.dumps(request)


@pytest.fixture
def gateway(server):
    """The test model can see (as a self-hosted vision endpoint is declared); the other, an endpoint litellm does not know, cannot."""
    options = {"api_base": server.url, "api_key": TEST_KEY, "supports_tools": True}
    return ModelGateway(model_options={TEST_MODEL: {**options, "supports_vision": True}, BLIND: options})


def test_a_fallback_that_cannot_see_gets_the_note_and_never_the_bytes(gateway, server):
    server.enqueue(Behavior(status=500), Behavior(reply="It bends."))
    completion = gateway.complete([TEST_MODEL, BLIND], asked_with_figure())
    seeing, blind = server.chat_requests()
    (part,) = image_parts(seeing)
    assert decoded(part).size == (800, 600) and IMAGE_ABOUT not in part, "what only the gateway reads is never sent"
    assert carries_no_image(blind)
    assert blind["messages"][-1]["content"] == f"Why does it bend?\n\n{NOTE}"
    assert (completion.model, completion.sees, completion.text) == (BLIND, False, "It bends.")


def test_a_model_litellm_does_not_know_to_see_gets_no_bytes(server):
    gateway = ModelGateway(model_options={TEST_MODEL: {"api_base": server.url, "api_key": TEST_KEY}})
    server.enqueue(Behavior(reply="ok"))
    gateway.complete([TEST_MODEL], asked_with_figure())
    assert carries_no_image(server.chat_requests()[0])


def show_figure(name: str, arguments: str) -> ToolResult:
    return ToolResult("1 image of cell 5 follows: figure from cell 5.", "looked at 1 image of cell 5", True, (figure_part(),))


def test_a_tool_s_image_follows_the_results_as_a_user_message_for_a_model_that_sees(gateway, server):
    server.enqueue(Behavior(tool_calls=[ToolCall("show_figure", {}, id="call_1")]), Behavior(reply="A flat blue figure."))
    runner = ToolRunner([LOOK, SHOW], show_figure, sighted=frozenset({"show_figure"}))
    completion = gateway.complete([TEST_MODEL], [{"role": "user", "content": "What does the plot show?"}], tools=runner)
    asked, answered = server.chat_requests()
    assert [tool["function"]["name"] for tool in asked["tools"]] == ["look", "show_figure"]
    result, images = answered["messages"][-2:]
    assert result == {"role": "tool", "tool_call_id": "call_1", "content": "1 image of cell 5 follows: figure from cell 5."}
    assert images["role"] == "user" and images["content"][0]["type"] == "text"
    (part,) = image_parts(answered)
    assert decoded(part).size == (800, 600) and IMAGE_ABOUT not in part
    assert completion.tool_calls[0]["images"] == ["figure from cell 5"]
    assert "base64," not in json.dumps(completion.tool_calls), "the answer's record names the images, never carries them"


def test_a_model_that_cannot_see_is_not_offered_the_tool_and_reads_notes_if_it_calls_it(gateway, server):
    server.enqueue(Behavior(tool_calls=[ToolCall("show_figure", {}, id="call_1")]), Behavior(reply="I cannot see it."))
    runner = ToolRunner([LOOK, SHOW], show_figure, sighted=frozenset({"show_figure"}))
    completion = gateway.complete([BLIND], [{"role": "user", "content": "What does the plot show?"}], tools=runner)
    asked, answered = server.chat_requests()
    assert [tool["function"]["name"] for tool in asked["tools"]] == ["look"]
    assert carries_no_image(asked) and carries_no_image(answered)
    assert answered["messages"][-1]["content"] == f"1 image of cell 5 follows: figure from cell 5.\n{NOTE}"
    assert "images" not in completion.tool_calls[0] and not completion.sees


def test_a_turn_falling_back_to_a_model_that_cannot_see_says_so_and_records_it(server, tmp_path):
    """Through the client: the notice and the answer's record name the model that answered, not the one that was asked first."""
    options = {"api_base": server.url, "api_key": TEST_KEY}
    store = SessionManager(str(tmp_path / "sessions"))
    client = OblixClient(
        model=TEST_MODEL, fallback_models=[BLIND], session_manager=store, tools=False,
        model_options={TEST_MODEL: {**options, "supports_vision": True}, BLIND: options},
    )
    session_id = store.create_session(title="plots")
    figure = NotebookImage("figure from cell 5", "image/png", figure_png(1600, 1200), 5, 1600, 1200)
    server.enqueue(Behavior(status=503), Behavior(reply="Without seeing it: no idea."))
    result = client.turn("Why does it bend?", session_id, images=[figure])
    seeing, blind = server.chat_requests()
    (part,) = image_parts(seeing)
    assert max(decoded(part).size) <= 1024
    assert carries_no_image(blind) and "[a 1024×768 figure from cell 5: this model cannot see images]" in blind["messages"][-1]["content"]
    assert result.model == BLIND
    assert "not sent to openai/text-only: figure from cell 5 (this model cannot see images)" in result.notice
    answer = store.get_session(session_id)["messages"][-1]
    assert answer["sent"]["images"] == [["figure from cell 5", "this model cannot see images"]]

    server.enqueue(Behavior(reply="It bends at 2019."))
    seen = client.turn("Why does it bend?", store.create_session(title="seen"), images=[figure])
    assert seen.model == TEST_MODEL and "not sent" not in (seen.notice or "")
    assert store.get_session(seen.session_id)["messages"][-1]["sent"]["images"] == [["figure from cell 5", "sent"]]
