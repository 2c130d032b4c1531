"""A model that can see asks for a cell's plot through the kernel's tools: real kernels with matplotlib, a scripted model over HTTP.

What the model was shown is read from the requests the loopback server received.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from kernels import outputs_text, run_cells
from model_server import Behavior, ToolCall, offered
from PIL import Image

from oblix_jupyter.sessions import SessionManager

pytestmark = pytest.mark.timeout(240)
LOAD = "%load_ext oblix_jupyter"
FIGURE = """%config InlineBackend.print_figure_kwargs = {"bbox_inches": None}
import matplotlib.pyplot as plt
fig = plt.figure(figsize=(16, 12), dpi=100)
plt.plot([2015, 2017, 2019, 2021], [1, 3, 9, 4]);"""  # execution count 2: a 1,600×1,200 figure


def image_parts(request: dict) -> list[dict]:
    return [
        part for message in request["messages"] if isinstance(message.get("content"), list)
        for part in message["content"] if part.get("type") == "image_url"
    ]


def test_a_vision_model_reads_the_cell_then_sees_its_figure(tool_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIX_VISION_MODELS", "openai/test-model")
    server = tool_model
    server.enqueue(
        Behavior(tool_calls=[ToolCall("notebook_cell", {"number": 2})]),
        Behavior(tool_calls=[ToolCall("cell_images", {"number": 2})]),
        Behavior(reply="The curve peaks in 2019."),
    )
    notebook = str(tmp_path / "nb" / "look.ipynb")
    client = run_cells([LOAD, FIGURE, "%%oblix\nWhy does the curve in cell 2 bend?"], notebook)

    first, second, third = server.chat_requests()[-3:]
    assert "cell_images" in offered(first)
    assert image_parts(first) == [] and image_parts(second) == [], "nothing is shown before the model asks"
    cell = [m["content"] for m in second["messages"] if m["role"] == "tool"][-1]
    assert "figure from cell 2: PNG, 1600×1200" in cell and "cell_images shows them" in json.dumps(first["tools"])
    result, images = third["messages"][-2:]
    assert result["role"] == "tool" and result["content"].startswith("1 image of cell 2 follow")
    assert images["role"] == "user", "OpenAI's tool messages carry text only: the image follows them"
    (part,) = image_parts(third)
    picture = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].partition(",")[2])))
    assert picture.size == (1024, 768) and set(part) == {"type", "image_url"}
    assert "The curve peaks in 2019." in outputs_text(client.nb.cells[2])

    store = SessionManager()
    answer = store.get_session(store.bound_session(notebook))["messages"][-1]
    assert [(call["name"], call.get("images")) for call in answer["tools"]] == [("notebook_cell", None), ("cell_images", ["figure from cell 2"])]
    assert answer["sent"]["images"] == [["figure from cell 2", "sent: the model asked for it"]]
    assert "base64," not in json.dumps(answer), "the answer names the image it was shown, and keeps no copy of it"


def test_a_model_that_cannot_see_is_never_offered_the_figure(tool_model, tmp_path):
    server = tool_model
    server.enqueue(
        Behavior(tool_calls=[ToolCall("cell_images", {"number": 2}), ToolCall("notebook_cell", {"number": 2})]),
        Behavior(reply="I can only read its source."),
    )
    run_cells([LOAD, FIGURE, "%%oblix\nWhat does the plot show?"], str(tmp_path / "nb" / "blind.ipynb"))
    first, second = server.chat_requests()[-2:]
    assert "notebook_cell" in offered(first) and "cell_images" not in offered(first)
    refused, cell = [m["content"] for m in second["messages"] if m["role"] == "tool"]
    assert "Unknown tool 'cell_images'" in refused
    assert "figure from cell 2" in cell and "named, not shown" in json.dumps(first["tools"])
    for request in (first, second):
        assert "image_url" not in json.dumps(request) and "base64," not in json.dumps(request)
