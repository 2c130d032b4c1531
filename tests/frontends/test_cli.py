"""The ``oblix`` command, run as a real process against a temp store and the loopback model server.

Processes that call a model import litellm (seconds each), so only four do: two
``ask``, one ``chat`` and one ``doctor``. Everything else must stay fast, and a test
checks that none of those commands imports litellm at all.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import subprocess
import sys
import uuid

import pytest
from conftest import TEST_KEY, TEST_MODEL
from traces import assert_fully_traced, make_sessions, traces

from oblix_jupyter.frontends.cli import main
from oblix_jupyter.models import local_model
from oblix_jupyter.sessions import SessionManager

pytestmark = pytest.mark.timeout(120)

FIRST = "abcdef01-0000-4000-8000-000000000000"
SECOND = "abcdef02-0000-4000-8000-000000000000"


def oblix(
    *arguments: str, stdin: str = "", env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oblix_jupyter.frontends.cli", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        cwd=cwd,
        timeout=90,
    )


def fails_with(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """The single ``oblix: ...`` line of a user error, after checking the exit code."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("usage:")]
    assert len(lines) == 1 and lines[0].startswith("oblix: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]
    return lines[0]


@pytest.fixture
def store():
    return SessionManager()


@pytest.fixture
def twins(store):
    """Two sessions whose ids share the prefix ``abcdef0``, the first bound to a notebook."""
    for session_id, title in ((FIRST, "Iris plots"), (SECOND, "Titanic cleaning")):
        store.add_session(
            {"id": session_id, "title": title, "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z",
             "messages": [], "context": {"dataset": title.split()[0].lower()}},
            new_id=False,
        )
    store.save_message(FIRST, "How do I plot petal length?")
    store.save_message(FIRST, "Use df.petal_length.hist().", role="assistant", model="openai/gpt-4o-mini")
    store.update_session(FIRST, model="openai/gpt-4o-mini")
    store.bind("/work/iris.ipynb", FIRST)
    return store


def test_version_through_the_installed_console_script():
    script = pathlib.Path(sys.executable).with_name("oblix")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("oblix 0.")


def test_sessions_table_json_search_and_limit(twins):
    table = oblix("sessions")
    assert table.returncode == 0 and table.stderr == ""
    header, first, second = table.stdout.splitlines()
    assert header.split() == ["TITLE", "ID", "MESSAGES", "MODEL", "UPDATED", "NOTEBOOK"]
    assert first.split()[:5] == ["Iris", "plots", "abcdef01", "2", "openai/gpt-4o-mini"]
    assert first.endswith("/work/iris.ipynb")
    assert header.index("ID") == first.index("abcdef01") == second.index("abcdef02")  # aligned
    lines = oblix("sessions", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [FIRST, SECOND]
    assert json.loads(lines[0])["notebooks"] == ["/work/iris.ipynb"]
    assert "abcdef01" in oblix("sessions", "--search", "PETAL").stdout
    assert "abcdef02" not in oblix("sessions", "--search", "PETAL").stdout
    assert len(oblix("sessions", "--limit", "1").stdout.splitlines()) == 2
    assert len(oblix("sessions", "--all").stdout.splitlines()) == 3
    fails_with(oblix("sessions", "--all", "--limit", "1"), "not allowed with")


def test_search_and_sharing_on_the_file_store(twins):
    """Ranked hits as plain lines (the database's ranking and snippets: test_postgres_frontends.py)."""
    found = oblix("search", "PETAL")
    assert (found.returncode, found.stdout) == (0, "1. Iris plots (abcdef01)\n")
    assert oblix("search", "plot", "length").stdout == "No session matches 'plot length'.\n"
    fails_with(oblix("share", "abcdef01", "bob"), "sharing needs the PostgreSQL store (OBLIX_STORE=postgresql://...)")
    assert oblix("shares", "abcdef01").stdout == "abcdef01 is shared with nobody.\n"


def test_sessions_warns_about_an_unreadable_file_and_lists_the_rest(twins):
    broken = pathlib.Path(twins.base_dir, f"{uuid.uuid4()}.json")
    broken.write_text("{ not json")
    result = oblix("sessions")
    assert result.returncode == 0 and "abcdef01" in result.stdout
    assert result.stderr.startswith("oblix: warning: ") and str(broken) in result.stderr


def test_show_resolves_a_prefix_and_prints_roles_and_models(twins):
    result = oblix("show", "abcdef01")
    assert result.returncode == 0
    assert result.stdout.startswith("# Iris plots\n")
    assert "**User**\n\nHow do I plot petal length?" in result.stdout
    assert "**Assistant** · openai/gpt-4o-mini\n\nUse df.petal_length.hist()." in result.stdout
    last = json.loads(oblix("show", "ABCDEF01", "--last", "1", "--json").stdout)
    assert last["id"] == FIRST and [m["role"] for m in last["messages"]] == ["assistant"]


def test_show_prints_a_hostile_session_without_terminal_controls(store):
    session_id = store.create_session(title="title\x1b]0;owned\x07")
    store.save_message(session_id, "hi \x1b[2J<b>bold</b>\x9b1m")
    result = oblix("show", session_id)
    assert result.returncode == 0
    assert not any(c in result.stdout for c in "\x1b\x07\x9b")
    assert "# title]0;owned\n" in result.stdout and "hi [2J<b>bold</b>1m" in result.stdout  # HTML is harmless here


def test_an_ambiguous_prefix_lists_the_candidates(twins):
    fails_with(oblix("show", "abcdef0"), "matches 2 sessions", FIRST, SECOND)


@pytest.mark.parametrize(
    "arguments",
    [["show", "0123"], ["export", "0123", "x.json"], ["rename", "0123", "T"], ["delete", "0123", "--yes"],
     ["ask", "--session", "0123", "hi"]],
)
def test_an_unknown_id_is_one_error_line(twins, arguments):
    fails_with(oblix(*arguments), "No session '0123'", "oblix sessions")


def test_usage_mistakes_exit_1_with_the_usage_line(twins):
    result = oblix("sessions", "--limit", "many")
    fails_with(result, "--limit", "'many'")
    assert result.stderr.startswith("usage: oblix sessions")
    fails_with(oblix("prune", "--older-than", "3 fortnights"), "not an age such as 30d")
    fails_with(oblix(), "COMMAND")
    fails_with(oblix("ask", "--new", "--session", "abcdef01", "hi"), "--new and --session cannot be used together")
    fails_with(oblix("ask", "--session", "abcdef01", "--title", "T", "hi"), "--title only goes with a new session")


def test_rename_prune_and_delete(twins):
    assert oblix("rename", "abcdef02", "Titanic,", "cleaned").returncode == 0
    assert twins.get_session(SECOND)["title"] == "Titanic, cleaned"
    stale = twins.add_session(dict(twins.get_session(SECOND), updated_at="2020-01-01T00:00:00Z"))
    dry = oblix("prune", "--older-than", "4w", "--dry-run")
    assert dry.returncode == 0 and stale in dry.stdout and SECOND not in dry.stdout  # the rename touched it
    assert twins.load_session(stale) is not None
    assert oblix("prune", "--older-than", "4w").returncode == 0
    assert twins.load_session(stale) is None and twins.load_session(SECOND) is not None
    fails_with(oblix("delete", "abcdef02"), "without --yes", "not a terminal")
    assert twins.load_session(SECOND) is not None
    assert oblix("delete", "abcdef02", "--yes").returncode == 0
    assert twins.load_session(SECOND) is None
    assert oblix("delete", "abcdef01", "--force").returncode == 0, "the notebooks' spelling is accepted too"
    assert twins.load_session(FIRST) is None


def test_delete_in_a_fresh_process_removes_every_trace_that_another_process_left(store):
    doomed, kept = make_sessions(store.base_dir, "/work/doomed.ipynb")
    assert_fully_traced(store.base_dir, doomed, "/work/doomed.ipynb")
    kept_traces = traces(store.base_dir, kept)
    result = oblix("delete", doomed[:8], "--yes")
    assert result.returncode == 0 and "Deleted 'doomed'" in result.stdout, result.stderr
    assert traces(store.base_dir, doomed) == []
    assert traces(store.base_dir, kept) == kept_traces


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer, kept", [("y\n", False), ("\n", True)])
def test_delete_asks_on_a_terminal(twins, monkeypatch, capsys, answer, kept):
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    assert main(["delete", "abcdef02"]) == 0
    assert "Delete 'Titanic cleaning' (abcdef02, 0 messages)? [y/N]" in capsys.readouterr().out
    assert (twins.load_session(SECOND) is not None) is kept


def test_export_then_import_through_the_command_line(twins, tmp_path):
    """The commands' plumbing; every format's round trip is tested once, in tests/store/test_formats.py."""
    path = tmp_path / "iris.ipynb"
    exported = oblix("export", "abcdef01", str(path))
    assert exported.returncode == 0 and str(path) in exported.stdout
    imported = oblix("import", str(path))
    assert imported.returncode == 0
    copy_id = imported.stdout.strip()
    assert copy_id != FIRST and twins.get_session(copy_id)["messages"] == twins.get_session(FIRST)["messages"]


def test_export_markdown(twins, tmp_path):
    assert oblix("export", "abcdef01", str(tmp_path / "iris.md")).returncode == 0
    assert (tmp_path / "iris.md").read_text(encoding="utf-8") == oblix("show", "abcdef01").stdout


# A session file as the original Oblix SDK wrote it: uuid message ids, isoformat() times without a zone.
SDK_FILE = """{
  "id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
  "title": "Customer Support Chat",
  "created_at": "2023-07-15T14:30:22.123456",
  "updated_at": "2023-07-15T14:35:46.789012",
  "messages": [
    {"id": "0b5a4d0e-3f0c-4c5e-9d57-6c1b2d3e4f50", "role": "user", "content": "Hello", "timestamp": "2023-07-15T14:30:22.123456"},
    {"id": "9a1f6e2b-8c7d-4e3f-a2b1-c0d9e8f7a6b5", "role": "assistant", "content": "Hi!", "timestamp": "2023-07-15T14:30:25.000001"}
  ],
  "context": {"customer_id": "cust_123", "subscription_tier": "premium"},
  "metadata": {}
}"""


def test_import_of_a_file_in_the_original_sdk_layout(store, tmp_path):
    (tmp_path / "sdk.json").write_text(SDK_FILE)
    result = oblix("import", str(tmp_path / "sdk.json"), "--keep-id")
    assert result.returncode == 0 and result.stdout == "7c9e6679-7425-40de-944b-e07fc1f90ae7\n"
    session = store.get_session("7c9e6679-7425-40de-944b-e07fc1f90ae7")
    assert [m["id"] for m in session["messages"]] == [m["id"] for m in json.loads(SDK_FILE)["messages"]]
    assert session["updated_at"] == "2023-07-15T14:35:46.789Z"
    assert session["context"] == {"customer_id": "cust_123", "subscription_tier": "premium"}


def test_a_malformed_import_is_one_error_line_and_creates_nothing(store, tmp_path):
    """How the command reports a bad file; what makes a file bad is tested in tests/store/test_formats.py."""
    path = tmp_path / "truncated.json"
    path.write_text('{"id": "abc", "messages": [{"role": "us')
    fails_with(oblix("import", str(path)), str(path), "invalid JSON")
    assert store.list_sessions() == []


def test_commands_that_call_no_model_never_import_litellm(twins, tmp_path):
    commands = [
        ["sessions"], ["sessions", "--search", "petal"], ["show", "abcdef01"],
        ["export", "abcdef01", str(tmp_path / "a.json")], ["export", "abcdef01", str(tmp_path / "a.md")],
        ["import", str(tmp_path / "a.json")], ["rename", "abcdef02", "Renamed"],
        ["prune", "--older-than", "1000w"], ["delete", "abcdef02", "--yes"], ["show", "no-such-id"],
    ]
    code = (
        "import sys; from oblix_jupyter.frontends.cli import main\n"
        f"for command in {commands!r}: main(command)\n"
        "print(sorted({'litellm', 'nbformat'} & set(sys.modules)), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0
    assert result.stderr.splitlines()[-1] == "[]"


def test_doctor_without_a_model_says_how_to_configure_one(store, tmp_path):
    pathlib.Path(store.base_dir, f"{uuid.uuid4()}.json").write_text("")
    store.create_session(title="fine")
    result = oblix("doctor")
    assert result.returncode == 0
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    assert rows["store"] == store.base_dir and rows["sessions"] == "1"
    assert "empty file" in rows["unreadable"]
    assert rows["relevance"] == "words and meaning (all-MiniLM-L6-v2-int8)"  # a default dependency: always here
    if local_model.is_available():
        assert "the offline default" in rows["model"] and "OBLIX_MODEL" in rows["model"]
    else:
        assert "No model configured" in rows["model"] and "OBLIX_MODEL" in rows["model"]
        assert "Local model unavailable" in rows["offline model"]
    installed = pathlib.Path(sys.prefix, "share", "jupyter", "labextensions", "oblix-jupyter", "package.json").exists()
    assert rows["lab extension"].startswith("installed in" if installed else "not installed")
    if installed:
        assert rows["lab extension"].endswith("enabled")


def test_doctor_reads_the_lab_extension_state_from_jupyter_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OBLIX_LOCAL_MODEL", "off")
    data, config = tmp_path / "data", tmp_path / "config"
    (data / "labextensions" / "oblix-jupyter").mkdir(parents=True)
    (data / "labextensions" / "oblix-jupyter" / "package.json").write_text('{"name": "oblix-jupyter"}')
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    assert main(["doctor"]) == 0
    assert "oblix-jupyter, enabled" in capsys.readouterr().out
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text('{"disabledExtensions": {"oblix-jupyter": true}}')
    assert main(["doctor"]) == 0
    assert "but disabled in" in capsys.readouterr().out


def test_ask_without_a_model_fails_before_creating_a_session(store):
    result = oblix("ask", "hello", env={**os.environ, "OBLIX_LOCAL_MODEL": "off"})
    fails_with(result, "No model configured")
    assert store.list_sessions() == []


# -- the four processes that talk to the model server ----------------------------------


def test_ask_from_stdin_in_a_new_session_and_by_prefix_in_an_old_one(model_env, twins):
    # The two processes run side by side: each spends seconds importing litellm.
    def start(*arguments: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "oblix_jupyter.frontends.cli", "ask", *arguments],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        )

    # The options a %%oblix cell shares with ask (commands.ASK_OPTIONS) reach the session and the request.
    new = start("--title", "Greeting", "--model", TEST_MODEL, "--max-tokens", "7", "--temperature", "0.3", "-")
    old = start("--session", "abcdef01", "and", "the", "sepals?")
    new_out, new_err = new.communicate("hi\n", timeout=90)
    old_out, old_err = old.communicate("", timeout=90)
    assert (new.returncode, new_out) == (0, "Echo: hi\n"), new_err
    assert (old.returncode, old_out, old_err) == (0, "Echo: and the sepals?\n", "")
    session_id = new_err.split("new session ")[1].split()[0]
    session = twins.get_session(session_id)
    assert [(m["role"], m["content"], m.get("model")) for m in session["messages"]] == [
        ("user", "hi", None), ("assistant", "Echo: hi", TEST_MODEL)
    ]
    assert (session["title"], session["model"]) == ("Greeting", TEST_MODEL)
    (greeting,) = [body for body in model_env.chat_requests() if body["messages"][-1]["content"] == "hi"]
    assert (greeting["max_tokens"], greeting["temperature"]) == (7, 0.3)
    assert twins.get_session(FIRST)["messages"][-1]["model"] == "openai/gpt-4o-mini"  # the session's own model
    sent = next(body["messages"] for body in model_env.chat_requests() if body["messages"][-1]["content"] != "hi")
    assert [m["content"] for m in sent][-3:] == ["How do I plot petal length?", "Use df.petal_length.hist().", "and the sepals?"]


def test_chat_runs_the_terminal_loop_in_a_session(model_env, twins):
    result = oblix("chat", "abcdef02", stdin="hello there\nexit\n")
    assert result.returncode == 0, result.stderr
    assert "Session Titanic cleaning (abcdef02)" in result.stdout and "Echo: hello there" in result.stdout
    assert [m["content"] for m in twins.get_session(SECOND)["messages"]] == ["hello there", "Echo: hello there"]


def test_doctor_takes_only_keys_from_the_dotenv_here_and_never_shows_one(model_env, store, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")  # the key is in the project's .env, as a notebook here would find it
    stranger = "http://127.0.0.1:9/v1"
    (tmp_path / ".env").write_text(
        f"OPENAI_API_KEY={TEST_KEY}\nOPENAI_BASE_URL={stranger}\nhttps_proxy={stranger}\nOBLIX_MODEL=openai/stranger\n"
    )
    result = oblix("doctor", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    assert rows[".env"] == (
        f"loaded OPENAI_API_KEY from {tmp_path / '.env'}; "
        "ignored OPENAI_BASE_URL, https_proxy, OBLIX_MODEL (a .env may only set keys)"
    )
    assert rows["model"] == f"{TEST_MODEL} (OBLIX_MODEL)"
    assert rows[f"key for {TEST_MODEL}"] == "set"
    assert TEST_KEY not in result.stdout + result.stderr and stranger not in result.stdout + result.stderr


def test_a_mistyped_command_or_option_gets_the_closest_one_in_one_line(store):
    line = fails_with(oblix("sesions"), "no command 'sesions'; did you mean 'sessions'?")
    assert "doctor" not in line, "not the list of every command"
    fails_with(oblix("local", "ad", "model.gguf"), "no command 'ad' in `oblix local`; did you mean 'add'?")
    fails_with(oblix("sessions", "--limt", "3"), "did you mean --limit?")
    fails_with(oblix("frobnicate"), "no command 'frobnicate'; `oblix --help` lists them.")
