"""The model looks at the kernel through read-only tools: ``%%oblix`` in real kernels, a scripted model over HTTP.

The loopback server plays a model that calls tools (OpenAI's streamed ``tool_calls``);
what the tools returned is read from the requests it received, so these tests check
what the model was really sent.
"""

from __future__ import annotations

import json

import pytest
from kernels import outputs_text, run_cells
from model_server import Behavior, ToolCall, offered

from oblix_jupyter.sessions import SessionManager

pytestmark = pytest.mark.timeout(180)
LOAD = "%load_ext oblix_jupyter"
DATA = (
    "import pandas as pd\n"
    "df = pd.DataFrame({'city': ['Paris', 'Lyon', 'Paris', 'Nice'], 'price': [10, 20, 30, 40]})\n"
    "api_key = 'sk-live-abcdef0123456789'"
)


def tool_results(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def test_the_model_reads_filtered_rows_and_the_record_is_kept(tool_model, tmp_path):
    server = tool_model
    paris = {"name": "df", "where": [{"column": "city", "op": "==", "value": "Paris"}], "columns": ["city", "price"]}
    server.enqueue(
        Behavior(tool_calls=[ToolCall("dataframe_rows", paris), ToolCall("list_variables")]),
        Behavior(reply="Two rows of df are in Paris."),
    )
    notebook = str(tmp_path / "nb" / "tools.ipynb")
    export = tmp_path / "exported.json"
    client = run_cells([DATA, LOAD, "%%oblix\nHow many rows of df are in Paris?", f"%oblix export {export}"], notebook)

    first, second = server.chat_requests()[-2:]
    assert {"list_variables", "describe_variable", "dataframe_rows", "notebook_cell", "last_error"} <= set(offered(first))
    rows, variables = tool_results(second)
    assert "2 of 4 rows match" in rows
    assert "| 0 | Paris | 10 |" in rows and "| 2 | Paris | 30 |" in rows and "Lyon" not in rows
    assert "`df`: pandas DataFrame, 4 rows" in variables
    assert "`api_key`" in variables and "sk-live" not in variables, "a secret-looking value is never sent unnamed"
    assert [m["role"] for m in second["messages"][-3:]] == ["assistant", "tool", "tool"]

    shown = client.nb.cells[2].outputs[-1]["data"]
    assert "<details class='oblix-tool'" in shown["text/html"] and "rows where city == 'Paris', 2 of 2 shown" in shown["text/html"]
    assert "Two rows of df are in Paris." in shown["text/plain"]

    store = SessionManager()
    answer = store.get_session(store.bound_session(notebook))["messages"][-1]
    assert set(answer) >= {"id", "role", "content", "timestamp"} and answer["role"] == "assistant"
    assert [call["name"] for call in answer["tools"]] == ["dataframe_rows", "list_variables"]
    assert answer["tools"][0]["result"] == rows
    exported = json.loads(export.read_text())
    assert exported["messages"][-1]["tools"] == answer["tools"]
    imported = store.import_session(str(export))
    assert store.get_session(imported)["messages"][-1]["tools"] == answer["tools"]

    server.enqueue(Behavior(reply="ok"))
    run_cells([LOAD, "%%oblix\nand Lyon?"], notebook)
    earlier = server.chat_requests()[-1]["messages"][-2]
    assert earlier["content"].startswith("Two rows of df are in Paris.")
    assert "[tools used for this answer: looked at `df`: rows where city == 'Paris'" in earlier["content"]
    assert "| 0 | Paris | 10 |" not in json.dumps(server.chat_requests()[-1]), "a past tool result is not resent"


def test_nothing_the_model_writes_runs_and_failures_and_limits_hold(tool_model, tmp_path):
    server = tool_model
    planted = tmp_path / "planted"
    injection = {"name": "df", "where": [{"column": "city", "op": "==", "value": f"__import__('os').system('touch {planted}')"}]}
    server.enqueue(
        Behavior(tool_calls=[ToolCall("dataframe_rows", injection), ToolCall("describe_variable", {"name": "api_key"})]),
        Behavior(tool_calls=[ToolCall("delete_everything", {"path": "/"}), ToolCall("dataframe_rows", "{not json")]),
        Behavior(reply="Nothing matched.", tool_calls=[ToolCall("list_variables")]),  # the last request: no tools offered
    )
    notebook = str(tmp_path / "nb" / "limits.ipynb")
    client = run_cells([DATA, LOAD, "%config Oblix.tool_rounds = 3", "%%oblix\nFind the rows of df for my city."], notebook)

    first, second, third = server.chat_requests()[-3:]
    rows, secret = tool_results(second)
    assert "0 of 4 rows match" in rows and not planted.exists()
    assert "looks like a secret" in secret and "sk-live" not in json.dumps(second)
    unknown, malformed = tool_results(third)[-2:]
    assert "Unknown tool 'delete_everything'" in unknown and "not valid JSON" in malformed
    assert offered(first) and offered(second) and not offered(third), "the last round offers no tools"
    shown = outputs_text(client.nb.cells[3])
    assert "Nothing matched." in shown and "Traceback" not in shown
    assert "delete_everything failed" in shown

    server.enqueue(Behavior(reply="plain"))
    run_cells([DATA, LOAD, "%%oblix --no-tools\nhow many rows?"], notebook)
    assert "tools" not in server.chat_requests()[-1]


def test_a_model_without_tool_support_gets_no_tools(model_env, tmp_path):
    server = model_env
    server.enqueue(Behavior(reply="no tools here"))
    client = run_cells([DATA, LOAD, "%%oblix\nhow many rows has df?"], str(tmp_path / "nb" / "plain.ipynb"))
    assert "tools" not in server.chat_requests()[-1]
    assert "no tools here" in outputs_text(client.nb.cells[2])


def test_a_model_failing_after_a_tool_keeps_the_record_of_what_it_looked_at(tool_model, tmp_path):
    server = tool_model
    server.enqueue(Behavior(tool_calls=[ToolCall("list_variables")]), Behavior(status=500))
    notebook = str(tmp_path / "nb" / "failing.ipynb")
    client = run_cells([DATA, LOAD, "%%oblix\nwhat is in the notebook?"], notebook)
    assert "failed" in outputs_text(client.nb.cells[2])
    store = SessionManager()
    question, answer = store.get_session(store.bound_session(notebook))["messages"][-2:]
    assert question["content"] == "what is in the notebook?"
    assert answer["status"] == "failed" and [call["name"] for call in answer["tools"]] == ["list_variables"]


PLANTED = {
    "a key assigned in a cell": "sk-proj-PLANTEDplantedPLANTED0123",
    "a short password": "hunter2",
    "a DataFrame column named api_key": "tok-col-7781",
    "a token nested in a dict": "tok-nested-9731",
    "an object whose repr holds a key": "AKIAPLANTED0EXAMPLE1",
    "a dataclass field": "pw-4417x",
    "a connection string's password": "s3cr3t-pw",
}
HOSTILE = [
    "import dataclasses\nimport pandas as pd",
    "class Stub:\n    pass\nopenai = Stub()\nopenai.api_key = 'sk-proj-PLANTEDplantedPLANTED0123'",
    'db_password = "hunter2"',
    "df = pd.DataFrame({'city': ['Paris', 'Lyon', 'Paris'], 'price': [10, 20, 30], 'api_key': ['tok-col-7781', 'tok-col-7782', 'x']})",
    "config = {'db': {'host': 'db.internal', 'options': [{'token': 'tok-nested-9731'}]}}",
    "class Client:\n    def __repr__(self):\n        return \"Client(region='eu', key='AKIAPLANTED0EXAMPLE1')\"\nclient = Client()",
    "@dataclasses.dataclass\nclass Settings:\n    user: str\n    password: str\nsettings = Settings('bob', 'pw-4417x')",
    "dsn = 'postgresql://alice:s3cr3t-pw@db.internal/app'",
    "config",
    "raise ConnectionError(f'could not connect to {dsn}')",
    LOAD,
    "%config Oblix.tool_rounds = 6",
]
VARIABLES = ["openai", "db_password", "df", "config", "client", "settings", "dsn", "Stub", "Client", "Settings"]


def every_tool_call() -> list[ToolCall]:
    """What a model that looks at everything asks for: every variable, every column, every cell, the last error."""
    calls = [ToolCall("list_variables"), ToolCall("last_error")]
    calls += [ToolCall("describe_variable", {"name": name}) for name in VARIABLES]
    calls += [ToolCall("describe_variable", {"name": "df", "column": column}) for column in ("city", "price", "api_key")]
    for where in ([], [{"column": "city", "op": "==", "value": "Paris"}], [{"column": "api_key", "op": "startswith", "value": "tok"}]):
        calls.append(ToolCall("dataframe_rows", {"name": "df", "where": where, "columns": ["city", "price", "api_key"]}))
    return calls + [ToolCall("notebook_cell", {"number": number}) for number in range(1, len(HOSTILE) + 2)]


def stored_bytes(home) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(home.rglob("*")) if path.is_file())


def test_a_model_calling_every_tool_gets_no_secret_and_nothing_secret_is_stored(tool_model, tmp_path, private_home):
    server = tool_model
    calls = every_tool_call()
    rounds = [calls[:8] + [ToolCall("list_variables")] * 2, *(calls[n : n + 8] for n in range(8, len(calls), 8))]
    assert len(rounds) <= 5, "the turn's rounds (tool_rounds 6: five with tools)"
    server.enqueue(*(Behavior(tool_calls=chunk) for chunk in rounds), Behavior(reply="Paris has two rows."))
    notebook = str(tmp_path / "nb" / "hostile.ipynb")
    run_cells([*HOSTILE, "%%oblix\nTell me everything in this notebook."], notebook)

    requests = server.chat_requests()[-(len(rounds) + 1) :]
    sent = json.dumps(requests)
    for where, secret in PLANTED.items():
        assert secret not in sent, f"{where} reached the model"
        assert secret.encode() not in stored_bytes(private_home), f"{where} was stored"
    results = [m["content"] for m in requests[-1]["messages"] if m["role"] == "tool"]
    assert len(results) == len(calls) + 2
    assert results[8] == results[9] == "Not run: at most 8 tool calls per request."
    assert "Limits: 8 tool calls a request, 6 requests a turn" in requests[0]["tools"][0]["function"]["description"]
    answered = "\n".join(results)  # the tools still answer plain questions
    assert "`df`: pandas DataFrame, 3 rows × 3 columns" in answered and "2 of 3 rows match" in answered
    assert "| 0 | Paris | 10 | [withheld: secret-looking] |" in answered and "'host': 'db.internal'" in answered
    assert "Settings(user='bob', password=[withheld: secret-looking])" in answered
    assert "ConnectionError: could not connect to postgresql://alice:[withheld: secret-looking]@db.internal/app" in answered

    store = SessionManager()
    answer = store.get_session(store.bound_session(notebook))["messages"][-1]
    assert answer["content"] == "Paris has two rows." and len(answer["tools"]) == len(calls)


def test_a_secret_named_with_vars_reaches_the_model_but_not_the_store(tool_model, tmp_path, private_home):
    server = tool_model
    server.enqueue(Behavior(tool_calls=[ToolCall("describe_variable", {"name": "db_password"})]), Behavior(reply="It is short."))
    notebook = str(tmp_path / "nb" / "named.ipynb")
    run_cells([HOSTILE[2], LOAD, "%%oblix --vars db_password\nIs {db_password} a strong password?"], notebook)
    first, second = server.chat_requests()[-2:]
    assert "hunter2" in json.dumps(first) and "hunter2" in tool_results(second)[0], "named on purpose: sent"
    assert b"hunter2" not in stored_bytes(private_home), "but never kept where a colleague may read it"
    store = SessionManager()
    question, answer = store.get_session(store.bound_session(notebook))["messages"][-2:]
    assert question["content"] == "Is [withheld: secret-looking] a strong password?"
    assert "looks like a secret" in answer["tools"][0]["result"]
