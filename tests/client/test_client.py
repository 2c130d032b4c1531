"""OblixClient against the loopback model server, through litellm over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from contextlib import closing
from urllib.parse import quote

import pytest
from conftest import TEST_KEY, TEST_MODEL
from model_server import Behavior
from postgres_server import DATABASE

from oblix_jupyter import OblixClient, SessionManager
from oblix_jupyter.errors import (
    AnswerInterrupted,
    ModelError,
    NoModelConfigured,
    PromptTooLarge,
    SessionNotFound,
)
from oblix_jupyter.store.factory import open_store
from oblix_jupyter.store.vector_file import FILE_NAME

SEED_SAMPLES = textwrap.dedent(
    """
    import asyncio, os, sys

    async def main():
        # --- the seed's samples, with `oblix` read as `oblix_jupyter` ---
        from oblix_jupyter import OblixClient

        client = OblixClient(oblix_api_key="your_api_key")

        # Create a new session
        session_id = await client.create_session(
            title="Customer Support Chat",
            initial_context={"customer_id": "cust_123", "subscription_tier": "premium"}
        )

        print(f"Created session: {session_id}")

        # Set the current session
        client.current_session_id = session_id

        # Execute prompts in the session context
        response = await client.execute("Hello, I'm having trouble with my account")

        # The context is automatically maintained
        follow_up_response = await client.execute("Can you help me reset my password?")

        # Send a single message in a session
        response = await client.chat_once("Hello, how can I help you today?")
        session_id = response["session_id"]

        # Continue the conversation in the same session
        response = await client.chat_once("I need help with my subscription", session_id)

        # Start an interactive chat session
        await client.start_chat()

        # Or resume an existing session
        await client.start_chat(session_id=session_id)

        # List recent sessions
        sessions = client.list_sessions(limit=10)
        for session in sessions:
            print(f"ID: {session['id']} | Title: {session['title']} | Messages: {session['message_count']}")

        # Load a specific session
        session_data = client.load_session(session_id)

        from oblix_jupyter.sessions import SessionManager

        # Custom session directory
        session_manager = SessionManager(base_dir=os.environ["CUSTOM_DIR"])

        # Use with client
        client = OblixClient(oblix_api_key="your_api_key")
        client.session_manager = session_manager

        # Create session with initial context
        session_id = await client.create_session(
            initial_context={
                "user_name": "Alex",
                "preferences": {
                    "language": "English",
                    "format": "concise"
                }
            }
        )
        client.current_session_id = session_id
        await client.execute("Hi")

        # Get session data
        session_data = client.load_session(session_id)

        # Access metadata
        title = session_data["title"]
        created_at = session_data["created_at"]
        message_count = len(session_data["messages"])

        # Get only the most recent messages
        recent_messages = session_data["messages"][-5:]

        # Filter by role
        user_messages = [msg for msg in session_data["messages"] if msg["role"] == "user"]
        print("SUMMARY", title, message_count, len(recent_messages), len(user_messages))

        # Delete a session
        success = client.delete_session(session_id)
        print("DELETED", success)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("where", ["files", "postgres"])
def test_seed_samples_run_as_written(model_env, tmp_path, where, request):
    env = dict(os.environ, CUSTOM_DIR=str(tmp_path / "custom"))
    if where == "postgres":  # OblixClient() without a session_manager: the store OBLIX_STORE names
        postgres = request.getfixturevalue("postgres")
        role = postgres.create_user(f"seed_{uuid.uuid4().hex[:8]}")
        env["OBLIX_STORE"] = f"postgresql://{role}@/{DATABASE}?host={quote(str(postgres.socket_dir))}&port=5432"
    chat_input = "hello from the terminal\n/list\nexit\nsecond chat line\nexit\n"
    result = subprocess.run(
        [sys.executable, "-c", SEED_SAMPLES], input=chat_input, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Created session: " in out
    assert "Echo: hello from the terminal" in out and "Echo: second chat line" in out
    assert "SUMMARY Chat Session " in out and " 2 2 1" in out
    assert "DELETED True" in out
    assert "Traceback" not in result.stderr

    store = open_store(env.get("OBLIX_STORE"))
    listed = store.list_sessions()
    support = store.load_session(next(s["id"] for s in listed if s["title"] == "Customer Support Chat"))
    assert [m["role"] for m in support["messages"]] == ["user", "assistant"] * 2
    assert support["messages"][1]["content"] == "Echo: Hello, I'm having trouble with my account"
    assert support["context"] == {"customer_id": "cust_123", "subscription_tier": "premium"}
    assert all(m["model"] == TEST_MODEL for m in support["messages"] if m["role"] == "assistant")
    # chat_once without a session id starts a new session; passing it back continues it.
    chats = [s for s in listed if s["title"].startswith("Chat Session")]
    assert sorted(s["message_count"] for s in chats) == [2, 6]  # start_chat() made one, start_chat(session_id) continued the chat_once one
    left = sorted(os.listdir(tmp_path / "custom"))  # the custom-dir session was deleted: nothing of it is left
    assert [name for name in left if name != ".vectors"] == [".index", ".locks"]
    if ".vectors" in left:  # its passages were embedded in the background before the delete: the file is left, empty
        with closing(sqlite3.connect(tmp_path / "custom" / ".vectors" / FILE_NAME)) as db:
            assert db.execute("SELECT (SELECT count(*) FROM vectors) + (SELECT count(*) FROM uses)").fetchone() == (0,)


@pytest.fixture
def client(model_env):
    return OblixClient()


def test_initial_context_and_history_reach_the_model(client, server):
    session_id = client.create_session_sync(title="t", initial_context={"user_name": "Alex"})
    client.execute_sync("first question", session_id)
    client.execute_sync("second question", session_id)
    sent = server.chat_requests()[-1]["messages"]
    assert sent[0]["role"] == "system" and '"user_name": "Alex"' in sent[0]["content"]
    assert sent[1:] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "Echo: first question"},
        {"role": "user", "content": "second question"},
    ]


def test_execute_without_a_session_stores_nothing(client, server):
    result = client.execute_sync("no session")
    assert result["response"] == "Echo: no session" and result["session_id"] is None
    assert client.list_sessions() == []
    assert server.chat_requests()[-1]["messages"] == [{"role": "user", "content": "no session"}]


def test_result_and_stored_answer_record_model_usage(client, server):
    session_id = client.create_session_sync()
    streamed: list[str] = []
    result = client.execute_sync("count my words", session_id, stream_to=streamed.append)
    assert "".join(streamed) == result["response"] == "Echo: count my words"
    assert len(streamed) > 1
    assert result["model"] == TEST_MODEL and result["usage"]["completion_tokens"] > 0
    answer = client.load_session(session_id)["messages"][-1]
    assert answer["model"] == TEST_MODEL and "status" not in answer
    assert answer["usage"]["prompt_tokens"] == result["usage"]["prompt_tokens"]
    assert client.load_session(session_id)["model"] == TEST_MODEL


def test_no_model_configured_is_a_clear_error(server, monkeypatch):
    monkeypatch.setenv("OBLIX_LOCAL_MODEL", "off")
    client = OblixClient()
    session_id = client.create_session_sync()
    with pytest.raises(NoModelConfigured, match="OBLIX_MODEL"):
        client.execute_sync("hello", session_id)
    assert client.load_session(session_id)["messages"] == []


def test_unknown_session_is_a_clear_error(client):
    with pytest.raises(SessionNotFound):
        client.execute_sync("hello", "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a")


def test_session_keeps_its_model_when_the_configuration_changes(client, server, monkeypatch):
    session_id = client.create_session_sync()
    client.execute_sync("one", session_id)
    monkeypatch.setenv("OBLIX_MODEL", "openai/other-model")
    result = OblixClient().execute_sync("two", session_id)
    assert result["model"] == TEST_MODEL
    assert server.chat_requests()[-1]["model"] == "test-model"
    fresh = OblixClient().chat_once_sync("three")
    assert fresh["model"] == "openai/other-model"


def test_fallback_on_server_error_records_the_answering_model(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    client = OblixClient(model="openai/primary", fallback_models=["openai/backup"])
    session_id = client.create_session_sync()
    client.execute_sync("before the outage", session_id)
    server.for_model("primary", Behavior(status=500))
    result = client.execute_sync("during the outage", session_id)
    assert result["model"] == "openai/backup"
    assert [r["model"] for r in server.chat_requests()[-2:]] == ["primary", "backup"]
    messages = client.load_session(session_id)["messages"]
    assert [m.get("model") for m in messages if m["role"] == "assistant"] == ["openai/primary", "openai/backup"]
    assert client.load_session(session_id)["model"] == "openai/primary"  # still pinned
    server.reset()
    assert client.execute_sync("after the outage", session_id)["model"] == "openai/primary"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fallback_when_the_connection_is_refused(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    client = OblixClient(
        model="openai/primary",
        fallback_models="openai/backup",
        model_options={
            "openai/primary": {"api_base": f"http://127.0.0.1:{_closed_port()}/v1"},
            "openai/backup": {"api_base": server.url},
        },
    )
    result = client.chat_once_sync("anyone there?")
    assert result["model"] == "openai/backup" and result["failed_models"][0][0] == "openai/primary"


def test_no_fallback_on_authentication_errors(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    server.for_model("primary", Behavior(status=401))
    client = OblixClient(model="openai/primary", fallback_models=["openai/backup"])
    session_id = client.create_session_sync()
    with pytest.raises(ModelError, match="authentication failed"):
        client.execute_sync("hello", session_id)
    assert [r["model"] for r in server.chat_requests()] == ["primary"]
    user, failure = client.load_session(session_id)["messages"]
    assert (user["content"], failure["role"], failure["status"], failure["model"]) == ("hello", "assistant", "failed", "openai/primary")
    assert failure["content"].startswith("openai/primary refused the request: authentication failed")


def test_a_missing_key_names_the_variable_to_set(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", server.url)
    client = OblixClient(model="openai/test-model")
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        client.chat_once_sync("hello")


def test_cut_stream_keeps_the_partial_answer_marked_error(client, server):
    session_id = client.create_session_sync()
    server.enqueue(Behavior(reply="one two three four five", drop_after=2))
    with pytest.raises(ModelError) as info:
        client.execute_sync("tell me", session_id)
    assert info.value.partial == "one two "
    user, answer = client.load_session(session_id)["messages"]
    assert user["content"] == "tell me"
    assert (answer["content"], answer["status"], answer["model"]) == ("one two ", "error", TEST_MODEL)


def test_keyboard_interrupt_keeps_the_partial_answer_marked_interrupted(client, server):
    session_id = client.create_session_sync()
    server.enqueue(Behavior(reply="one two three four five", token_delay=0.05))
    seen: list[str] = []

    def on_text(text: str) -> None:
        seen.append(text)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(AnswerInterrupted) as info:
        client.execute_sync("tell me", session_id, stream_to=on_text)
    assert info.value.partial == "one two "
    answer = client.load_session(session_id)["messages"][-1]
    assert (answer["content"], answer["status"]) == ("one two ", "interrupted")
    assert client.execute_sync("again", session_id)["response"] == "Echo: again"


def test_the_user_message_is_stored_before_any_answer_text_shows(client, server):
    session_id = client.create_session_sync()
    server.enqueue(Behavior(reply="a b c", stall_after=1))
    seen_while_streaming: list[list[str]] = []

    def on_text(_: str) -> None:
        seen_while_streaming.append([m["content"] for m in client.load_session(session_id)["messages"]])
        threading.Timer(0.2, server.release).start()

    client.execute_sync("remember me", session_id, stream_to=on_text)
    assert seen_while_streaming[0] == ["remember me"]


def test_async_execute_cancelled_keeps_the_partial_answer(client, server):
    session_id = client.create_session_sync()
    server.enqueue(Behavior(reply="w " * 50, token_delay=0.05))

    async def scenario() -> None:
        first = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(
            client.execute("long answer", session_id, stream_to=lambda _: loop.call_soon_threadsafe(first.set))
        )
        await asyncio.wait_for(first.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    for _ in range(100):  # the worker thread stores the partial answer at its next chunk
        messages = client.load_session(session_id)["messages"]
        if len(messages) == 2:
            break
        threading.Event().wait(0.05)
    assert messages[-1]["status"] == "interrupted" and 0 < len(messages[-1]["content"]) < len("w " * 50)


def test_recency_budget_omits_the_oldest_and_says_so(model_env, server):
    client = OblixClient(max_input_tokens=1200)
    session_id = client.create_session_sync()
    for number in range(40):
        client.session_manager.save_message(session_id, f"message {number} " + "word " * 40, role="user")
    result = client.execute_sync("latest", session_id, max_tokens=200)
    plan = result["plan"]
    assert plan.used <= plan.budget == 1000
    sent = server.chat_requests()[-1]["messages"]
    assert sent[0]["role"] == "system" and "earlier message(s)" in sent[0]["content"]
    assert sent[-1] == {"role": "user", "content": "latest"}
    assert sent[-2]["content"].startswith("message 39 ")
    assert len(plan.omitted) == 40 - (len(sent) - 2)
    with pytest.raises(PromptTooLarge):
        client.execute_sync("word " * 5000, session_id)


def test_api_keys_never_land_in_a_session(client, server, private_home):
    server.enqueue(Behavior(reply=f"leaked {TEST_KEY} here", drop_after=3))
    session_id = client.create_session_sync()
    with pytest.raises(ModelError) as info:
        client.execute_sync("hi", session_id)
    assert TEST_KEY not in str(info.value)
    for root, _, files in os.walk(private_home):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                assert TEST_KEY.encode() not in handle.read(), name


def test_importing_the_package_does_not_import_litellm():
    code = "import sys, oblix_jupyter; from oblix_jupyter import OblixClient, SessionManager; print('litellm' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_session_files_hold_json_only(client):
    session_id = client.chat_once_sync("hello")["session_id"]
    with open(os.path.join(client.session_manager.base_dir, f"{session_id}.json")) as handle:
        assert json.load(handle)["_default"]["1"]["id"] == session_id


def test_cost_is_reported_when_litellm_knows_the_price(model_env):
    priced = OblixClient(model="openai/gpt-4o-mini").chat_once_sync("what does this cost?")
    assert priced["cost"] and priced["cost"] > 0
    unpriced = OblixClient().chat_once_sync("and this?")
    assert unpriced["cost"] is None


def test_a_prompt_that_cannot_be_stored_is_reported_as_a_store_error(model_env, tmp_path):
    from filelock import FileLock

    from oblix_jupyter.errors import StoreBusy

    store = SessionManager(tmp_path, lock_timeout=0.3)
    client = OblixClient(session_manager=store, fallback_models=["openai/never-tried"])
    session_id = client.create_session_sync()
    shown: list[str] = []
    with FileLock(os.path.join(tmp_path, ".locks", f"{session_id}.lock")):  # another writer holds the session
        with pytest.raises(StoreBusy, match="locked by another process"):
            client.execute_sync("keep me", session_id, stream_to=shown.append)
    assert shown, "the answer still streamed"
    assert [r["model"] for r in model_env.chat_requests()] == ["test-model"]  # not taken for a model failure
    assert client.load_session(session_id)["messages"] == []  # nothing half-recorded
    client.execute_sync("keep me", session_id)
    assert [m["content"] for m in client.load_session(session_id)["messages"]][0] == "keep me"


def test_a_long_lived_client_keeps_its_caches_bounded(client, monkeypatch):
    import oblix_jupyter.turn as turn_module

    monkeypatch.setattr(turn_module, "INDEXED_SESSIONS", 3)
    turns = client._turns
    for n in range(6):
        session_id = client.create_session_sync(title=f"s{n}")
        turns.lexical_index(session_id, [{"id": "msg_1", "role": "user", "content": f"words of session {n}"}])
    assert len(turns._indexes) == 3, "only the sessions used last keep their word index"
    count = turns.counter("openai/gpt-4o-mini")
    assert count is turns.counter("openai/gpt-4o-mini") and count.cache_info().maxsize == turn_module.TOKEN_COUNTS


def test_a_first_answer_from_the_fallback_leaves_the_session_on_its_own_model(server, monkeypatch):
    """The session's first turn meets an outage: the model that stood in answers, and is not what the session keeps."""
    monkeypatch.setenv("OPENAI_API_BASE", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    client = OblixClient(model="openai/primary", fallback_models=["openai/backup"])
    session_id = client.create_session_sync()
    server.for_model("primary", Behavior(status=500))
    assert client.execute_sync("during the outage", session_id)["model"] == "openai/backup"
    assert client.load_session(session_id)["model"] == "openai/primary", "the session's model, not the one that stood in"
    assert [r["model"] for r in server.chat_requests()] == ["primary", "backup"]
    server.reset()  # the outage is over (and the requests' record starts again)
    assert client.execute_sync("after the outage", session_id)["model"] == "openai/primary"
    assert [r["model"] for r in server.chat_requests()] == ["primary"]
