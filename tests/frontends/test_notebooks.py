"""The example notebooks are documentation: they must run top to bottom, as a reader runs them."""

from __future__ import annotations

import pathlib

import pytest
from kernels import outputs_text, run_notebook_file
from model_server import Behavior, ToolCall

from oblix_jupyter.models import local_model
from oblix_jupyter.sessions import SessionManager

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = pytest.mark.timeout(300)


def copy_of(name: str, tmp_path: pathlib.Path) -> str:
    """Run a copy, so executing never writes outputs into the repository's notebooks."""
    target = tmp_path / name
    target.write_bytes((NOTEBOOKS / name).read_bytes())
    return str(target)


def answers(notebook) -> list[str]:
    return [outputs_text(cell) for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith("%%oblix")]


def test_quickstart(model_env, tmp_path):
    notebook = run_notebook_file(copy_of("quickstart.ipynb", tmp_path))
    first, second = answers(notebook)
    assert first.startswith("Echo: In one sentence") and "openai/test-model" in first
    sent = model_env.chat_requests()[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    text = "\n".join(outputs_text(cell) for cell in notebook.cells)
    assert "◀ this notebook" in text and "quickstart - 4 messages" in text


def test_sessions_api(model_env, tmp_path):
    notebook = run_notebook_file(copy_of("sessions.ipynb", tmp_path))
    text = "\n".join(outputs_text(cell) for cell in notebook.cells)
    assert "openai/test-model -> Echo: Hello, I'm having trouble with my account" in text
    assert "Title: Customer Support Chat | Messages: 4" in text
    assert text.count("True") >= 3 and "True None" in text


def test_context(model_env, tmp_path):
    notebook = run_notebook_file(copy_of("context.ipynb", tmp_path))
    first, second = answers(notebook)
    assert "Context sent" in first and "| prompt |" in first
    requests = model_env.chat_requests()
    assert "Is a decision threshold of 0.35 sensible for features ['tenure'" in requests[0]["messages"][-1]["content"]
    assert '"project": "churn model"' in requests[0]["messages"][0]["content"]
    assert requests[1]["messages"][-1] == {"role": "user", "content": "Name one metric for an imbalanced classifier."}
    assert requests[1]["max_tokens"] == 60


@pytest.mark.skipif(not local_model.is_available(), reason=str(local_model.unavailable_reason()))
@pytest.mark.parametrize("name", ["quickstart.ipynb", "sessions.ipynb", "context.ipynb"])
def test_notebooks_run_offline_with_nothing_configured(name, tmp_path):
    path = copy_of(name, tmp_path)
    notebook = run_notebook_file(path)
    text = "\n".join(outputs_text(cell) for cell in notebook.cells)
    assert "local/smollm2-135m" in text
    for answer in answers(notebook):
        assert "tiny offline model" in answer
    if name == "quickstart.ipynb":
        session = SessionManager().get_session(SessionManager().bound_session(path))
        assert [m["role"] for m in session["messages"]] == ["user", "assistant"] * 2


def test_run_code(model_env, tmp_path):
    code = "totals = sales.groupby('region')['units'].sum()\ntotals.idxmax(), int(totals.max())"
    model_env.enqueue(
        Behavior(tool_calls=[ToolCall("run_code", {"code": code, "reason": "to add up the units per region"})]),
        Behavior(reply="North sold the most units: 215."),
    )
    notebook = run_notebook_file(copy_of("run_code.ipynb", tmp_path), env={"OBLIX_TOOL_MODELS": "openai/test-model"})
    text = "\n".join(outputs_text(cell) for cell in notebook.cells)
    assert "The model asks to run this (to add up the units per region)" in text and "North sold the most units: 215." in text
    assert "ran code the user approved: `totals = sales.groupby('region')['units'].sum()…`" in text
    (result,) = [m["content"] for m in model_env.chat_requests()[-1]["messages"] if m["role"] == "tool"]
    assert "tuple of 2 items: 'north', 215" in result, "the model read what the approved code computed"
    assert "[('run', " in text
