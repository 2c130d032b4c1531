"""``%%oblix`` and ``%oblix`` in real kernels, against the loopback model server."""

from __future__ import annotations

import json
import os
import queue
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jupyter_client.manager import start_new_kernel
from kernels import outputs_text, run_cells
from model_server import Behavior, ModelServer
from test_cli import SDK_FILE
from traces import assert_fully_traced, make_sessions, traces
from waiting import wait_until

from oblix_jupyter.errors import BadArguments
from oblix_jupyter.frontends.magics import (
    interpolate,
    parse_cell_options,
    parse_line_command,
)
from oblix_jupyter.sessions import SessionManager

pytestmark = pytest.mark.timeout(180)
LOAD = "%load_ext oblix_jupyter"


def conversation(store: SessionManager, session_id: str) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in store.get_session(session_id)["messages"]]


def test_streaming_history_restart_and_two_notebooks(model_env, tmp_path):
    server = model_env
    server.default = Behavior(token_delay=0.06)
    notebook = str(tmp_path / "work" / "analysis.ipynb")
    first = run_cells([LOAD, "%%oblix\nfirst question about pandas", "%%oblix\nsecond question"], notebook)

    answer_cell = first.nb.cells[1]
    final = answer_cell.outputs[-1]
    assert final["output_type"] == "display_data"
    assert "<p>Echo: first question about pandas</p>" in final["data"]["text/html"]
    assert "openai/test-model" in final["data"]["text/html"]  # the footer
    assert "text/markdown" not in final["data"], "JupyterLab renders raw HTML in live Markdown"
    assert final["data"]["text/plain"].startswith("Echo: first question about pandas")
    updates = [kind for index, kind in first.message_types if index == 1 and kind == "update_display_data"]
    assert len(updates) >= 2, "the answer must stream into the output"

    assert server.chat_requests()[-1]["messages"][-3:] == [
        {"role": "user", "content": "first question about pandas"},
        {"role": "assistant", "content": "Echo: first question about pandas"},
        {"role": "user", "content": "second question"},
    ]
    store = SessionManager()
    session_id = store.bound_session(notebook)
    assert store.get_session(session_id)["title"] == "analysis"

    server.default = Behavior()
    run_cells([LOAD, "%%oblix\nthird, after a restart"], notebook)
    assert [m["content"] for m in server.chat_requests()[-1]["messages"] if m["role"] == "user"] == [
        "first question about pandas",
        "second question",
        "third, after a restart",
    ]
    assert len(store.get_session(session_id)["messages"]) == 6

    other = str(tmp_path / "work" / "other.ipynb")
    run_cells([LOAD, "%%oblix\nfresh notebook"], other)
    assert server.chat_requests()[-1]["messages"] == [{"role": "user", "content": "fresh notebook"}]
    assert store.bound_session(other) not in (None, session_id)


def test_line_commands(model_env, tmp_path):
    notebook = str(tmp_path / "nb" / "commands.ipynb")
    store = SessionManager()
    spare = store.create_session(title="spare session")
    store.save_message(spare, "an old question")
    store.save_message(spare, "a newer answer", role="assistant", model="openai/x")
    export_path = tmp_path / "exported.json"
    by_id_path = tmp_path / "by-id.json"
    sdk_path = tmp_path / "sdk.json"
    sdk_path.write_text(SDK_FILE)
    client = run_cells(
        [
            LOAD,
            "%%oblix\nhello",
            "%oblix sessions",
            "%oblix rename My analysis",
            "%oblix context dataset=iris rows=150",
            "%oblix context --clear rows",
            "%oblix model --fallbacks openai/backup",
            f"%oblix show {spare[:8]} --last 1",
            "%oblix delete " + spare[:8],
            "%oblix delete {bound}",
            f"%oblix export {export_path}",
            "%oblix help",
            "import oblix_jupyter\nhandle = oblix_jupyter.current()\nprint(handle.title, len(handle.messages))\nhandle",
            f"%oblix import {export_path}",
            "%oblix new Second thoughts",
            "%oblix sessions --search analysis",
            "%oblix sessions --limit 1",
            f"%oblix export {{handle.id}} {by_id_path}",  # a session other than the notebook's, named as on the command line
            f"%oblix import {sdk_path} --keep-id",
        ],
        notebook,
    )
    cells = client.nb.cells
    bound = json.loads(export_path.read_text())["id"]  # the notebook's first session
    assert "◀ this notebook" in outputs_text(cells[2]) and "spare session" in outputs_text(cells[2])
    assert "<table>" in cells[2].outputs[0]["data"]["text/html"]
    assert "Renamed" in outputs_text(cells[3])
    assert json.loads(cells[5].outputs[0]["data"]["text/plain"]) == {"dataset": "iris"}
    assert "fallbacks: openai/backup" in outputs_text(cells[6])
    assert "a newer answer" in outputs_text(cells[7]) and "an old question" not in outputs_text(cells[7])
    assert "Deleted" in outputs_text(cells[8]) and store.load_session(spare) is None
    assert "No session '{bound}'" in outputs_text(cells[9]) or "not a valid session id" in outputs_text(cells[9])
    assert json.loads(export_path.read_text())["title"] == "My analysis"
    assert "sessions" in outputs_text(cells[11]) and "--explain" in outputs_text(cells[11])
    assert "My analysis 2" in outputs_text(cells[12])
    assert "<b>My analysis</b>" in outputs_text(cells[12])
    assert "Imported session" in outputs_text(cells[13])
    assert "My analysis" in outputs_text(cells[15])
    newest = outputs_text(cells[16])  # `new` bound the notebook to the newest session, and only it is listed
    assert "Second thoughts" in newest and "◀ this notebook" in newest and "My analysis" not in newest
    assert json.loads(by_id_path.read_text())["id"] == bound
    assert store.bound_session(notebook) == json.loads(SDK_FILE)["id"]
    session = store.get_session(bound)
    assert session["title"] == "My analysis" and session["context"] == {"dataset": "iris"}
    assert session["fallback_models"] == ["openai/backup"]


def test_deleting_the_bound_session_needs_yes_or_its_old_spelling_force(model_env, tmp_path):
    notebook = str(tmp_path / "nb" / "delete.ipynb")
    client = run_cells(
        [
            LOAD,
            "%%oblix\nhello",
            "from oblix_jupyter import current\nsid = current().id",
            "%oblix delete {sid}",
            "%oblix delete {sid} --force",
        ],
        notebook,
    )
    assert "add --yes" in outputs_text(client.nb.cells[3])
    assert "Deleted" in outputs_text(client.nb.cells[4])
    assert SessionManager().bound_session(notebook) is None


def test_oblix_delete_removes_every_trace_that_another_process_left(tmp_path):
    notebook = str(tmp_path / "nb" / "doomed.ipynb")
    base_dir = SessionManager().base_dir
    doomed, kept = make_sessions(base_dir, notebook)
    assert_fully_traced(base_dir, doomed, notebook)
    kept_traces = traces(base_dir, kept)
    client = run_cells([LOAD, f"%oblix delete {doomed[:8]} --force"], notebook)
    assert "Deleted session" in outputs_text(client.nb.cells[1])
    assert traces(base_dir, doomed) == []
    assert traces(base_dir, kept) == kept_traces


def test_interpolation_code_format_and_explain(model_env, tmp_path):
    server = model_env
    notebook = str(tmp_path / "nb" / "interp.ipynb")
    server.for_model("coder", Behavior(reply="Here:\n```python\nprint('generated')\n```\nDone."))
    client = run_cells(
        [
            LOAD,
            "threshold = 0.75\nnames = ['a', 'b']",
            "%%oblix\nIs {threshold} high? {{literal}} {missing} {names[1]}",
            "%%oblix --model openai/coder --format code\nwrite code",
            "%%oblix --explain --no-history --max-tokens 50 --temperature 0.1\nexplain me",
        ],
        notebook,
    )
    sent = server.chat_requests()[0]["messages"][-1]["content"]
    assert sent == "Is 0.75 high? {literal} {missing} b"
    payloads = client.replies[3]["content"].get("payload", [])
    assert any(p.get("source") == "set_next_input" and p.get("text") == "print('generated')" for p in payloads)
    explain = outputs_text(client.nb.cells[4])
    assert "Context sent" in explain and "| prompt |" in explain
    last = server.chat_requests()[-1]
    assert last["messages"] == [{"role": "user", "content": "explain me"}]
    assert last["max_tokens"] == 50 and last["temperature"] == 0.1
    session = SessionManager().get_session(SessionManager().bound_session(notebook))
    assert session["model"] == "openai/coder"


def test_errors_are_one_clear_line_and_lose_nothing(model_env, tmp_path):
    server = model_env
    notebook = str(tmp_path / "nb" / "errors.ipynb")
    store = SessionManager()
    for prefix in ("abcdef01", "abcdef02"):
        store.add_session({**store.get_session(store.create_session()), "id": f"{prefix}-0000-4000-8000-000000000000"}, new_id=False)
    server.for_model("test-model", Behavior(status=500))
    client = run_cells(
        [
            LOAD,
            "%%oblix --session 5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a\nhello",
            "%%oblix --session abcdef0\nhello",
            "%%oblix --colour red\nhello",
            "%%oblix\nplease keep this message",
            "%%oblix\n   ",
        ],
        notebook,
    )
    texts = [outputs_text(cell) for cell in client.nb.cells]
    assert "No session '5f3e9a7b" in texts[1]
    assert "matches 2 sessions" in texts[2]
    assert "unrecognized arguments: --colour" in texts[3] and "usage: %%oblix" in texts[3]
    assert "openai/test-model failed with HTTP 500: Scripted error (HTTP 500)" in texts[4] and "litellm" not in texts[4]
    assert "The cell is empty" in texts[5]
    for text in texts[1:]:
        assert "Traceback" not in text and "Oblix error" in text
    assert all(cell.outputs[0]["output_type"] == "display_data" for cell in client.nb.cells[1:])
    session_id = store.bound_session(notebook)
    assert conversation(store, session_id) == [
        ("user", "please keep this message"),
        ("assistant", "openai/test-model failed with HTTP 500: Scripted error (HTTP 500)"),
    ]


def test_a_cell_that_failed_twice_then_ran_again_stores_and_sends_its_prompt_once(model_env, tmp_path):
    server = model_env
    notebook = str(tmp_path / "nb" / "orders.ipynb")
    question = "Which city has the largest single order?"
    server.enqueue(Behavior(status=500), Behavior(status=500))
    client = run_cells([LOAD, *[f"%%oblix\n{question}"] * 3, "%oblix show"], notebook)
    cells = client.nb.cells
    for failed in cells[1:3]:
        (error,) = [shown for output in failed.outputs if "Oblix error" in (shown := output["data"].get("text/plain", ""))]
        assert error == "Oblix error: openai/test-model failed with HTTP 500: Scripted error (HTTP 500)"
    assert f"Echo: {question}" in outputs_text(cells[3]) and "Oblix error" not in outputs_text(cells[3])

    store = SessionManager()
    messages = store.get_session(store.bound_session(notebook))["messages"]
    assert [(m["role"], m.get("status")) for m in messages] == [("user", None), ("assistant", "failed"), ("assistant", "failed"), ("assistant", None)]
    shown = cells[4].outputs[0]["data"]["text/plain"]
    assert shown.count("--- User") == 1 and shown.count(question) == 2  # asked once, answered once (the echo)
    assert shown.count("· failed ·") == 2
    requests = server.chat_requests()
    assert len(requests) == 3
    assert all(r["messages"] == [{"role": "user", "content": question}] for r in requests), "once per attempt, never twice"


def test_help_is_a_table_and_a_mistyped_command_gets_the_closest_one(tmp_path):
    client = run_cells([LOAD, "%oblix", "%oblix sesions", "%oblix show --lats 2", "%oblix frobnicate"], str(tmp_path / "nb" / "help.ipynb"))
    cells = client.nb.cells
    commands, options = (output["data"] for output in cells[1].outputs)
    assert commands["text/html"].count("<tr>") == 17 and "<td style='text-align:left'>%oblix show [--last N] [--explain] [ID]</td>" in commands["text/html"]
    rows = commands["text/plain"].splitlines()
    assert rows[2].startswith("%oblix sessions [--limit N | --all] [--search TEXT]") and rows[2].endswith("List sessions, most recently updated first.")
    column = rows[1].index("what it does")
    assert len(rows) == 18 and all(row[column - 2 : column] == "  " and row[column] != " " for row in rows[2:]), "aligned columns"
    assert "<td style='text-align:left'>--format {markdown,code,text}</td>" in options["text/html"]
    typo = cells[2].outputs[0]["data"]["text/plain"]
    assert typo == "Oblix error: %oblix has no command 'sesions'; did you mean `%oblix sessions`?"
    assert outputs_text(cells[3]).count("usage: %oblix show [--last N] [--explain] [ID]") == 2  # the plain line and the HTML
    assert "unrecognized arguments: --lats (did you mean --last?)" in outputs_text(cells[3])
    assert "white-space:pre-wrap" in cells[3].outputs[0]["data"]["text/html"], "the usage on its own line"
    assert cells[4].outputs[0]["data"]["text/plain"] == "Oblix error: %oblix has no command 'frobnicate'; `%oblix help` lists the commands."


def test_no_model_configured_says_what_to_do(server, tmp_path):
    client = run_cells([LOAD, "%%oblix\nhello"], str(tmp_path / "nb" / "nomodel.ipynb"), env={"OBLIX_LOCAL_MODEL": "off"})
    text = outputs_text(client.nb.cells[1])
    assert "No model configured" in text and "OBLIX_MODEL" in text and "Traceback" not in text


def test_interrupting_a_streaming_cell_keeps_the_partial_answer(model_env, tmp_path):
    server = model_env
    server.default = Behavior(reply="word " * 200, token_delay=0.05)
    notebook = str(tmp_path / "nb" / "interrupt.ipynb")
    manager, kernel = start_new_kernel(kernel_name="python3", env={**os.environ, "JPY_SESSION_NAME": notebook})
    try:
        kernel.execute_interactive(LOAD, timeout=60)
        kernel.execute("%%oblix\ntell me a long story")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the answer is visibly streaming
            try:
                message = kernel.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            shown = message["content"].get("data", {}).get("text/plain", "") if message["msg_type"] == "update_display_data" else ""
            if "word" in shown:  # the answer's text, not the progress shown before it
                break
        manager.interrupt_kernel()
        after = kernel.execute_interactive("print('kernel alive', 6 * 7)", timeout=60)
        assert after["content"]["status"] == "ok"
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)
    store = SessionManager()
    user, answer = store.get_session(store.bound_session(notebook))["messages"]
    assert user["content"] == "tell me a long story"
    assert answer["status"] == "interrupted" and 0 < len(answer["content"]) < len("word " * 200)


def test_the_lab_extension_comm_reports_the_notebook_and_insertion_stops_when_it_closes(tmp_path):
    """What the extension does over its comm, sent as a browser would send it, to a real kernel."""
    notebook = str(tmp_path / "nb" / "from-the-page.ipynb")
    manager, kernel = start_new_kernel(kernel_name="python3", env={**os.environ, "JPY_SESSION_NAME": ""})
    probe = "import oblix_jupyter.frontends.magics as m; print(m._active.lab.insert_cell('x = 1'), m._active.binding.key)"

    def printed(code: str) -> str:
        lines: list[str] = []

        def keep(message):
            if message["msg_type"] == "stream":
                lines.append(message["content"]["text"])

        reply = kernel.execute_interactive(code, timeout=60, output_hook=keep)
        assert reply["content"]["status"] == "ok"
        return "".join(lines).strip()

    def comm_message(kind: str, content: dict) -> None:
        kernel.shell_channel.send(kernel.session.msg(kind, content))

    try:
        printed(LOAD)
        comm_message("comm_open", {"comm_id": "page-1", "target_name": "oblix.session", "data": {"notebook_path": notebook}})
        wait_until(lambda: printed(probe) == f"True {notebook}", 30, "the kernel to take the page's comm and path")
        comm_message("comm_close", {"comm_id": "page-1", "data": {}})
        # The notebook keeps its path and session; only inserting cells needs the page.
        wait_until(lambda: printed(probe) == f"False {notebook}", 30, "the kernel to let the closed comm go")
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)


def test_interpolation_rules():
    namespace = {"x": 3, "In": ["", "df.describe()"], "Out": {1: "table"}, "bad": _Unprintable()}
    assert interpolate("{x} {{x}} {y} {In[1]} {Out[1]} {Out[7]} {bad}", namespace) == "3 {x} {y} df.describe() table {Out[7]} {bad}"
    assert interpolate('{"json": 1}', namespace) == '{"json": 1}'


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


WORDS = ["--session", "--new", "--title", "--model", "--vars", "--format", "code", "xml", "--max-tokens", "-1", "5",
         "--temperature", "3", "--explain", "sessions", "show", "--last", "delete", "--force", "--yes", "--limit", "--all", "--keep-id", "context", "a=1", "=",
         "--clear", "use", "model", "export", "share", "unshare", "--write", "\"", "'", "--", "-h", "--help", "a,b", "1x,"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=8), max_size=8).map(" ".join))
def test_any_magic_line_parses_or_gives_a_usage_error(line):
    for parse in (parse_cell_options, parse_line_command):
        try:
            parse(line)
        except BadArguments as error:
            assert str(error).strip()


def test_configuration_from_the_traitlets_profile_and_config(model_env, tmp_path, monkeypatch):
    server = model_env
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text('c.Oblix.show_footer = False\nc.Oblix.model = "openai/from-profile"\n')
    monkeypatch.delenv("OBLIX_MODEL")
    env = {"IPYTHONDIR": str(tmp_path / "ipython"), "OBLIX_LOCAL_MODEL": "off"}
    client = run_cells(
        [
            LOAD,
            "%%oblix\nfrom the profile's model",
            '%config Oblix.model = "openai/configured"',
            "%%oblix --new\nfrom the configured model",
        ],
        str(tmp_path / "project" / "config.ipynb"),
        env=env,
    )
    assert [r["model"] for r in server.chat_requests()] == ["from-profile", "configured"]
    assert "<sub>" not in outputs_text(client.nb.cells[1])  # show_footer = False from the profile


def test_a_dotenv_beside_the_notebook_may_supply_keys_and_nothing_else(model_env, tmp_path, monkeypatch):
    """A cloned repository's .env that points the user's own key at a stranger's server, proxy and folder."""
    home = tmp_path / "user-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OBLIX_HOME")  # the user's store is the default one, ~/.oblix
    monkeypatch.delenv("OPENAI_API_KEY")  # the user keeps this key in the project's .env
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-the-users-own")
    dotenv_key = "sk-from-dotenv-0123456789"
    stranger_home = tmp_path / "stranger-home"
    project = tmp_path / "cloned-project"
    project.mkdir()
    with ModelServer() as attacker, ModelServer() as proxy:
        proxy_url = f"http://127.0.0.1:{proxy.port}"
        (project / ".env").write_text(
            "# came with the repository\n"
            f"export OPENAI_API_KEY='{dotenv_key}'\n"
            "ANTHROPIC_API_KEY=sk-ant-the-strangers\n"
            f"OPENAI_BASE_URL={attacker.url}\nOPENAI_API_BASE={attacker.url}\n"
            f"HTTPS_PROXY={proxy_url}\nHTTP_PROXY={proxy_url}\nall_proxy={proxy_url}\n"
            f"OBLIX_HOME={stranger_home}\n"
        )
        client = run_cells(
            [
                LOAD,
                "%%oblix\nfirst question",
                "%config Oblix.max_input_tokens = 8000",  # a new client and store, after the .env was read
                "%%oblix\nsecond question",
                "import os\nprint(os.environ['ANTHROPIC_API_KEY'] == 'sk-ant-the-users-own', 'OBLIX_HOME' in os.environ)",
            ],
            str(project / "analysis.ipynb"),
        )
        assert attacker.requests == [] and proxy.connections_opened == 0
    answered = [r for r in model_env.requests if r["method"] == "POST"]
    assert [r["body"]["messages"][-1]["content"] for r in answered] == ["first question", "second question"]
    assert {r["headers"]["authorization"] for r in answered} == {f"Bearer {dotenv_key}"}
    assert not stranger_home.exists()
    store = SessionManager(home / ".oblix" / "sessions")
    assert conversation(store, store.bound_session(str(project / "analysis.ipynb"))) == [
        ("user", "first question"), ("assistant", "Echo: first question"),
        ("user", "second question"), ("assistant", "Echo: second question"),
    ]
    first, second = outputs_text(client.nb.cells[1]), outputs_text(client.nb.cells[3])
    assert (
        f"loaded OPENAI_API_KEY from {project / '.env'}; kept ANTHROPIC_API_KEY as already set; "
        "ignored OPENAI_BASE_URL, OPENAI_API_BASE, HTTPS_PROXY, HTTP_PROXY, all_proxy, OBLIX_HOME (a .env may only set keys)"
    ) in first
    assert "ignored" not in second, "the notice is shown once"
    shown = "".join(outputs_text(cell) for cell in client.nb.cells)
    assert dotenv_key not in shown and attacker.url not in shown and proxy_url not in shown
    assert "True False" in outputs_text(client.nb.cells[4])


def test_variables_errors_and_pins_reach_the_model(model_env, tmp_path):
    server = model_env
    client = run_cells(
        [
            LOAD,
            'import pandas as pd\ndf = pd.DataFrame({"height": [1.5, None, 1.8]})\napi_key = "sk-notebook-secret-123"',
            "%%oblix\nWhat is in df, and is api_key set?",
            "%%oblix --vars api_key\nCheck this one.",
            "1 / 0",
            "%%oblix\nWhy did that fail?",
            "%oblix pin msg_1",
            "%oblix pin msg_99",
            "%oblix show --last 1",
            "%%oblix --explain\nAnd the pinned question?",
        ],
        str(tmp_path / "nb" / "vars.ipynb"),
    )
    first, named, failure = (json.dumps(r["messages"]) for r in server.chat_requests()[:3])
    assert "height" in first and "sk-notebook-secret-123" not in first
    assert "sk-notebook-secret-123" in named
    assert "ZeroDivisionError" in failure
    assert "Pinned messages: msg_1" in outputs_text(client.nb.cells[6])
    assert "no message 'msg_99'" in outputs_text(client.nb.cells[7])
    assert "msg_6" in outputs_text(client.nb.cells[8])
    assert "| pinned | msg_1 |" in outputs_text(client.nb.cells[9])  # the stored pin reaches the selector
    session = SessionManager().get_session(SessionManager().bound_session(str(tmp_path / "nb" / "vars.ipynb")))
    assert session["pinned"] == ["msg_1"]


def test_an_open_chat_panel_follows_a_configuration_change(model_env, tmp_path):
    other_store = str(tmp_path / "other-store")
    client = run_cells(
        [
            LOAD,
            "%%oblix\nfirst question",
            "from oblix_jupyter.frontends.magics import active\npanel = active().chat_panel()",
            f"%config Oblix.base_dir = {other_store!r}",
            "%%oblix\nin the new store",
            "print(panel.client.session_manager.base_dir, panel.client is active().client)\n"
            "print([m['content'] for m in panel.client.get_session(panel.session_id)['messages']])",
        ],
        str(tmp_path / "nb" / "panel.ipynb"),
    )
    shown = outputs_text(client.nb.cells[5])
    assert f"{other_store} True" in shown
    assert "in the new store" in shown and "first question" not in shown
