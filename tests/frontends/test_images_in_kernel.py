"""Plots attached to a question, in a real kernel with matplotlib, sent over real HTTP to the loopback server."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import pytest
from kernels import outputs_text, run_cells
from PIL import Image

from oblix_jupyter.sessions import SessionManager

pytestmark = pytest.mark.timeout(240)
LOAD = "%load_ext oblix_jupyter"
FIGURE = """%config InlineBackend.print_figure_kwargs = {"bbox_inches": None}
import matplotlib.pyplot as plt
fig = plt.figure(figsize=(16, 12), dpi=100)
plt.plot([2015, 2017, 2019, 2021], [1, 3, 9, 4]);"""


def image_parts(request: dict) -> list[bytes]:
    """The decoded bytes of every image part of the request's last (user) message."""
    content = request["messages"][-1]["content"]
    parts = [part for part in content if part.get("type") == "image_url"] if isinstance(content, list) else []
    return [base64.b64decode(part["image_url"]["url"].partition(",")[2]) for part in parts]


def text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content if part.get("type") == "text")


def test_a_figure_reaches_a_model_that_sees_shrunk_and_one_that_does_not_gets_a_note(model_env, tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIX_VISION_MODELS", "openai/test-model")  # as a user declares a self-hosted vision endpoint
    notebook = str(tmp_path / "nb" / "plots.ipynb")
    client = run_cells(
        [
            LOAD,
            FIGURE,  # execution count 2
            "%%oblix --image 2\nWhy does this curve bend at 2019?",
            "%%oblix --model openai/text-only --image\nAnd now?",
            "%%oblix\nAnything else?",
            "%%oblix --image 99\nthis cell showed nothing",
            "%oblix show",
        ],
        notebook,
    )
    seeing, blind, later = model_env.chat_requests()[-3:]
    (sent,) = image_parts(seeing)
    picture = Image.open(io.BytesIO(sent))
    assert max(picture.size) <= 1024 and picture.size == (1024, 768), picture.size
    assert len(sent) < 300_000
    assert text_of(seeing["messages"][-1]) == "Why does this curve bend at 2019?"

    assert image_parts(blind) == [] and isinstance(blind["messages"][-1]["content"], str)
    assert "[a 1024×768 figure from cell 2: this model cannot see images]" in blind["messages"][-1]["content"]
    assert "not sent to openai/text-only: figure from cell 2 (this model cannot see images)" in outputs_text(client.nb.cells[3])
    # Later turns never send an old image again: they name it.
    assert image_parts(later) == [] and all(isinstance(m["content"], str) for m in later["messages"])
    assert "[image sent earlier: figure from cell 2]" in json.dumps(later["messages"])
    assert "Cell 99 displayed no image" in outputs_text(client.nb.cells[5])
    # The cell and %oblix show show what was attached as thumbnails: the kept bytes, inline, the label escaped.
    thumbnail = f"<figure class='oblix-thumb'><img src='data:{Image.open(io.BytesIO(sent)).get_format_mimetype()};base64,{base64.b64encode(sent).decode()}' alt='figure from cell 2'><figcaption>figure from cell 2</figcaption></figure>"
    for cell in (client.nb.cells[2], client.nb.cells[6]):
        shown = [output["data"]["text/html"] for output in cell["outputs"] if "text/html" in output.get("data", {})]
        assert any(thumbnail in html for html in shown), outputs_text(cell)[:300]
    assert "attached: figure from cell 2" in outputs_text(client.nb.cells[2])

    store = SessionManager()
    (session_id,) = [row["id"] for row in store.list_sessions()]
    session = store.get_session(session_id)
    asked = [m for m in session["messages"] if m["role"] == "user"]
    assert [m["content"] for m in asked] == ["Why does this curve bend at 2019?", "And now?", "Anything else?"]
    (entry,) = asked[0]["attachments"]
    assert (entry["label"], entry["width"], entry["height"], entry["mime"]) == ("figure from cell 2", 1024, 768, Image.open(io.BytesIO(sent)).get_format_mimetype())
    assert store.read_attachment(session_id, entry["id"]) == sent, "what the session keeps is what the model was sent"
    assert asked[1]["attachments"][0]["id"] == entry["id"], "the same figure is kept once"
    answers = [m for m in session["messages"] if m["role"] == "assistant"]
    assert answers[0]["sent"]["images"] == [["figure from cell 2", "sent"]]
    assert answers[1]["sent"]["images"] == [["figure from cell 2", "this model cannot see images"]]

    deleted = subprocess.run(
        [sys.executable, "-m", "oblix_jupyter.frontends.cli", "delete", session_id, "--yes"],
        capture_output=True, text=True, timeout=90, env=dict(os.environ),
    )
    assert deleted.returncode == 0, deleted.stderr
    attachments = os.path.join(store.base_dir, ".attachments")
    assert not os.path.exists(os.path.join(attachments, session_id)), "delete means every byte of its images"


def test_a_figure_named_in_the_prompt_is_attached_and_nothing_is_attached_unasked(model_env, tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIX_VISION_MODELS", "openai/test-model")
    run_cells([LOAD, FIGURE, "%%oblix\nWhat does {fig} show?", "%%oblix\nand the plot above?"], str(tmp_path / "nb" / "named.ipynb"))
    named, unasked = model_env.chat_requests()[-2:]
    (sent,) = image_parts(named)
    assert Image.open(io.BytesIO(sent)).size == (1024, 768)
    assert image_parts(unasked) == [], "a plot above is not attached unless asked"
