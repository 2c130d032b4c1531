"""Turns on the PostgreSQL store while the database goes away: the kept answer costs milliseconds, is announced as
kept on a brand-new session too, and the next turn's model sees it (the spool is written before the session is read).

The database's failure is made by ``fault_proxy.FaultProxy`` turning connections away
mid-answer, so the moment is the same every run.
"""

from __future__ import annotations

import io
import os
import time

import pytest
from fault_proxy import FaultProxy
from model_server import Behavior
from postgres_server import DATABASE
from waiting import wait_until

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import ModelError, StoreUnavailable

pytestmark = pytest.mark.timeout(120)

ANSWER = "an answer that streams on while the database goes away, and is kept"


@pytest.fixture
def proxy(postgres):
    proxy = FaultProxy(os.path.join(postgres.socket_dir, ".s.PGSQL.5432"))
    yield proxy
    proxy.close()


def test_a_turn_that_keeps_its_answer_locally_costs_milliseconds_says_so_and_the_next_turn_sees_it(
    model_env, postgres, proxy, monkeypatch
):
    monkeypatch.setenv("OBLIX_STORE", proxy.dsn(postgres.create_user(), DATABASE))
    client = OblixClient()
    session_id = client.create_session_sync(title="brand new")  # no model pinned yet: the turn would pin it
    model_env.enqueue(Behavior(reply=ANSWER, token_delay=0.05))
    last_piece: list[float] = []

    def database_goes_away(piece: str) -> None:
        if not last_piece:
            proxy.refuse()
        last_piece[:] = [time.monotonic()]

    try:
        result = client.execute_sync("first question", session_id, stream_to=database_goes_away)
        after_the_answer = time.monotonic() - last_piece[0]
        assert result["response"] == ANSWER and result["message_id"] is None
        assert "saved on this machine" in result["notice"]
        print(f"a saved-locally turn ends {after_the_answer * 1000:.0f} ms after its answer's last piece")
        assert after_the_answer < 0.5, "no waiting for the database once it failed"
        assert ("saved locally", "1 message(s) waiting for the database") in client.diagnose()
    finally:
        proxy.accept()
    client.execute_sync("second question", session_id)
    sent = [(m["role"], m["content"]) for m in model_env.chat_requests()[-1]["messages"] if m["role"] != "system"]
    assert sent == [("user", "first question"), ("assistant", ANSWER), ("user", "second question")]
    contents = [m["content"] for m in client.load_session(session_id)["messages"]]
    assert contents == ["first question", ANSWER, "second question", "Echo: second question"]
    assert ("saved locally", "none waiting") in client.diagnose()
    client.session_manager.close()


def test_a_spool_left_by_a_killed_kernel_is_written_by_the_next_one_before_anything_else(model_env, postgres, proxy, monkeypatch):
    role = postgres.create_user()
    monkeypatch.setenv("OBLIX_STORE", proxy.dsn(role, DATABASE))
    killed = OblixClient()
    session_id = killed.create_session_sync(title="left behind")
    killed.execute_sync("question", session_id)
    proxy.refuse()
    kept = killed.session_manager.save_message(session_id, "the answer a killed kernel kept", role="assistant")
    assert kept["saved_locally"]
    killed.session_manager.close()  # as gone as a killed kernel: nothing of it writes the spool
    proxy.accept()
    successor = OblixClient()  # another kernel of the user, on another notebook: it never reads that session
    wait_until(lambda: not successor.session_manager.spool.pending(), 5, "the new kernel to write what the killed one kept")
    rows = postgres.admin_query("SELECT id, content FROM oblix.messages WHERE session_id = %s ORDER BY position", (session_id,))
    assert rows == [("msg_1", "question"), ("msg_2", "Echo: question"), ("msg_3", "the answer a killed kernel kept")]
    successor.session_manager.close()


def plots_through_the_proxy(postgres, proxy, monkeypatch):
    """A new user's client on the database through ``proxy``, a vision model, a new session and a small figure."""
    from PIL import Image

    from oblix_jupyter.kernel.images import NotebookImage

    monkeypatch.setenv("OBLIX_STORE", proxy.dsn(postgres.create_user(), DATABASE))
    monkeypatch.setenv("OBLIX_VISION_MODELS", "openai/test-model")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "navy").save(buffer, "PNG")
    client = OblixClient()
    return client, client.create_session_sync(title="plots"), NotebookImage("figure from cell 2", "image/png", buffer.getvalue(), 2, 64, 48)


def test_a_question_with_a_picture_is_kept_when_the_database_goes_away_its_picture_named_not_lost(
    model_env, postgres, proxy, monkeypatch, tmp_path
):
    client, session_id, figure = plots_through_the_proxy(postgres, proxy, monkeypatch)
    try:  # the database goes away after the session is read, before the picture and the question are written
        result = client.turn("why does it bend?", session_id, images=[figure], on_model=lambda _model: proxy.refuse())
        assert "saved on this machine" in (result.notice or "")
    finally:
        proxy.accept()
    client.execute_sync("and now?", session_id)
    asked = [m for m in client.load_session(session_id)["messages"] if m["role"] == "user"]
    assert [m["content"] for m in asked] == ["why does it bend?", "and now?"]
    (entry,) = asked[0]["attachments"]
    assert entry["label"] == "figure from cell 2" and "id" not in entry and "unavailable" in entry["withheld"]
    assert len(model_env.chat_requests()[-2]["messages"][-1]["content"]) == 2, "the model still saw the picture"
    for extension in (".json", ".ipynb"):  # a named-only picture travels as it is
        copy = client.import_session(client.export_session(session_id, tmp_path / f"plots{extension}"))
        assert client.load_session(copy)["messages"][0]["attachments"] == [entry]
    client.session_manager.close()


def test_a_retry_while_the_database_is_away_asks_nothing_and_sends_the_picture_once_it_is_back(model_env, postgres, proxy, monkeypatch):
    """The failed question's picture cannot be read: a retry that went on would ask the model another question, without it."""
    client, session_id, figure = plots_through_the_proxy(postgres, proxy, monkeypatch)
    model_env.enqueue(Behavior(status=500))
    with pytest.raises(ModelError):
        client.execute_sync("why does it bend?", session_id, images=[figure])
    asked = len(model_env.chat_requests())
    try:  # the database goes away once the session is read, before the picture is
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            client.retry_sync(session_id, on_model=lambda _model: proxy.refuse())
    finally:
        proxy.accept()
    assert len(model_env.chat_requests()) == asked, "nothing was asked without the picture"
    client.retry_sync(session_id)
    parts = [part["type"] for part in model_env.chat_requests()[-1]["messages"][-1]["content"]]
    assert parts == ["text", "image_url"], "the retry sends the picture the question had"
    assert [m["role"] for m in client.load_session(session_id)["messages"]] == ["user", "assistant", "assistant"]
    client.session_manager.close()
