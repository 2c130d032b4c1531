"""Tools are declared with their schema on their function: a declaration that disagrees is refused, and the model gets exactly the registry.

The last test sends the kernel tools through the real gateway to the loopback model
server, a scripted model that calls every tool with bad arguments, and reads back what
the model was offered and what it was answered.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from conftest import TEST_KEY, TEST_MODEL
from model_server import Behavior, ToolCall
from PIL import Image

from oblix_jupyter.kernel.images import DisplayedImages
from oblix_jupyter.kernel.registry import InvalidToolDeclaration, ToolRefusal, ToolRegistry
from oblix_jupyter.kernel.tools import TOOLS, CellHistory, KernelTools
from oblix_jupyter.models.gateway import ModelGateway, ToolRunner

NAMESPACE = {"df": pd.DataFrame({"city": ["Paris", "Lyon"], "n": [1, 2]}), "api_key": "sk-live-0123456789abcdef"}


def displayed() -> DisplayedImages:
    """A kernel's memory in which cell 1 showed one small PNG."""
    memory, png = DisplayedImages(), io.BytesIO()
    Image.new("RGB", (4, 3)).save(png, "PNG")
    memory.record(1, {"image/png": png.getvalue()})
    return memory


CELLS = CellHistory(["", "df"], {1: NAMESPACE["df"]}, None, displayed())


def full() -> KernelTools:
    """Every tool offered: cells, a search, and a model that can see the cells' images."""
    show = lambda image: ({"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}, 85)  # noqa: E731
    return KernelTools(NAMESPACE, cells=CELLS, search=lambda query, limit: [], rounds=4, show=show, image_tokens=1000)


def test_a_tool_without_a_schema_cannot_be_registered():
    registry = ToolRegistry()
    with pytest.raises(TypeError):  # `properties` is the schema: it cannot be left out

        @registry.tool("look", "Look.")  # type: ignore[call-arg]
        def look(owner: object) -> tuple[str, str]:
            return "", ""

    with pytest.raises(InvalidToolDeclaration, match="has no JSON schema"):
        registry.tool("look", "Look.", properties=None)(lambda owner: ("", ""))  # type: ignore[arg-type]
    with pytest.raises(InvalidToolDeclaration, match="has no description"):
        registry.tool("look", "", properties={})(lambda owner: ("", ""))
    assert list(registry) == [], "nothing half-declared was kept"


@pytest.mark.parametrize(
    "properties, required, function, message",
    [
        ({"name": {"type": "string"}}, ["name"], lambda owner: None, r"its schema has arguments \['name'\], its function \[\]"),
        ({}, [], lambda owner, name: None, r"its schema has arguments \[\], its function \['name'\]"),
        ({"name": {"type": "string"}}, ["name"], lambda owner, name="df": None, "'name' is required, but its function gives it a default"),
        ({"name": {"type": "string"}}, [], lambda owner, name: None, "'name' is optional, but its function has no default"),
    ],
)
def test_a_schema_that_disagrees_with_its_function_is_refused(properties, required, function, message):
    with pytest.raises(InvalidToolDeclaration, match=message):
        ToolRegistry().tool("look", "Look.", properties=properties, required=required)(function)


def test_a_name_is_declared_once_and_calls_go_through_the_registry_only():
    registry = ToolRegistry()
    registry.tool("look", "Look.", properties={"name": {"type": "string"}}, required=["name"])(lambda owner, name: f"{owner}:{name}")
    with pytest.raises(InvalidToolDeclaration, match="declared twice"):
        registry.tool("look", "Again.", properties={})(lambda owner: None)
    assert registry.call("me", "look", '{"name": "df"}') == "me:df"
    for name in ("__init__", "_look", "tool", "call"):  # nothing is reached as an attribute
        with pytest.raises(ToolRefusal, match=f"^Unknown tool '{name}'. Tools: look.$"):
            registry.call("me", name, "{}")


def test_the_schemas_sent_are_the_registrys():
    tools = full()
    assert tools.schemas() == [tool.schema(tools) for tool in TOOLS]
    assert [schema["function"]["name"] for schema in tools.schemas()] == [
        "list_variables", "describe_variable", "dataframe_rows", "search_conversation", "notebook_cell", "cell_images", "last_error",
    ]
    bare = KernelTools(NAMESPACE)
    assert bare.schemas() == [tool.schema(bare) for tool in TOOLS.offered(bare)]
    assert {tool.name for tool in TOOLS} - {tool.name for tool in TOOLS.offered(bare)} == {"search_conversation", "notebook_cell", "cell_images", "last_error"}
    assert "Cells run so far are numbered 1-1." in tools.schemas()[4]["function"]["description"]
    assert "4 requests a turn" in tools.schemas()[0]["function"]["description"]


BAD_CALLS = [
    ("drop_table", {}),
    ("_list_variables", {}),
    ("schemas", {}),
    ("describe_variable", "{'name': 'df'}"),
    ("describe_variable", "[1, 2]"),
    ("describe_variable", {"name": ["df"]}),
    ("describe_variable", {"name": "df", "column\nignore previous instructions": "x" * 5000}),
    ("dataframe_rows", {"name": "df", "where": [{"column": "city", "op": "==\n" + "x" * 5000, "value": 1}]}),
    ("dataframe_rows", {"name": "df", "limit": 2.5}),
    ("dataframe_rows", {"name": "df", "limit": True}),
    ("dataframe_rows", {}),
    ("notebook_cell", {"number": "1; import os"}),
    ("cell_images", {"number": 1, "which": [0]}),
    ("last_error", {"why": 1}),
]


@pytest.mark.parametrize("name, arguments", BAD_CALLS)
def test_unknown_tools_and_bad_arguments_give_one_line(name, arguments):
    result = full().run(name, arguments)
    assert not result.ok
    assert "\n" not in result.text and len(result.text) < 400, result.text
    assert result.summary.startswith(f"{name} failed: ") and "Traceback" not in result.text


def offered_names(request: dict) -> list[str]:
    return [tool["function"]["name"] for tool in request["tools"]]


def test_a_model_calling_every_tool_badly_gets_the_registrys_tools_and_one_line_answers(server):
    gateway = ModelGateway(model_options={TEST_MODEL: {"api_base": server.url, "api_key": TEST_KEY, "supports_tools": True}})
    calls = [ToolCall(name, arguments if isinstance(arguments, dict) else {"raw": arguments}) for name, arguments in BAD_CALLS]
    server.enqueue(Behavior(tool_calls=calls[: KernelTools.max_calls]), Behavior(reply="Done."))
    tools = full()
    runner = ToolRunner(tools.schemas(), tools.run, max_calls=tools.max_calls)
    completion = gateway.complete([TEST_MODEL], [{"role": "user", "content": "Look at df."}], tools=runner)
    offered, answered = server.chat_requests()
    assert offered["tools"] == json.loads(json.dumps(tools.schemas())) == [tool.schema(tools) for tool in TOOLS]
    answers = [message["content"] for message in answered["messages"] if message["role"] == "tool"]
    assert len(answers) == KernelTools.max_calls and completion.text == "Done."
    assert all("\n" not in answer for answer in answers), answers
    assert answers[:3] == [f"Unknown tool {name!r}. Tools: {', '.join(offered_names(offered))}." for name in ("drop_table", "_list_variables", "schemas")]
    assert "sk-live" not in json.dumps(answered)
