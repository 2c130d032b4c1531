"""``OblixClient()`` on the PostgreSQL store chosen by ``OBLIX_STORE``: turns, the selector's vectors, delete."""

from __future__ import annotations

import threading
import uuid
from urllib.parse import quote

import pytest
from conftest import TEST_MODEL
from model_server import Behavior
from postgres_server import DATABASE

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import StoreUnavailable
from oblix_jupyter.store.postgres import PostgresStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def database_user(postgres, monkeypatch):
    """A new hub user whose OBLIX_STORE names the database, as a hub's spawner would set it."""
    role = postgres.create_user(f"kernel_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("OBLIX_STORE", f"postgresql://{role}@/{DATABASE}?host={quote(str(postgres.socket_dir))}&port=5432")
    return role


def test_turns_vectors_and_delete_go_to_the_database_named_by_oblix_store(model_env, database_user, postgres):
    client = OblixClient(max_input_tokens=400)
    store = client.session_manager
    assert isinstance(store, PostgresStore) and "password" not in store.location
    session_id = client.create_session_sync(title="on the hub")
    for number in range(12):  # more than the window holds: the selector chooses, with embeddings
        client.execute_sync(f"question {number} about merging frames on the customer key, and some more words", session_id)
    client.wait_for_background()
    client.execute_sync("which key did we merge on?", session_id)
    plan = model_env.chat_requests()[-1]
    assert plan["model"] == TEST_MODEL.split("/")[1] and plan["messages"][-1]["content"] == "which key did we merge on?"
    messages = client.load_session(session_id)["messages"]
    assert [m["id"] for m in messages] == [f"msg_{n}" for n in range(1, 27)]
    stored = postgres.admin_query("SELECT count(*) FROM oblix.vectors WHERE owner = %s", (database_user,))[0][0]
    assert stored >= 12, "the selector's vectors live in the database, for every node of a hub"

    assert client.session_manager.delete_session(session_id)
    assert postgres.admin_query("SELECT count(*) FROM oblix.messages WHERE session_id = %s", (session_id,))[0][0] == 0
    assert postgres.admin_query("SELECT count(*) FROM oblix.vectors WHERE owner = %s", (database_user,))[0][0] == 0
    store.close()


def test_a_database_lost_mid_answer_keeps_the_answer_and_a_lost_one_at_the_start_stops_before_the_model(
    model_env, database_user, postgres
):
    client = OblixClient()
    session_id = client.create_session_sync(title="faults")
    client.execute_sync("first question", session_id)
    model_env.enqueue(Behavior(reply="a long answer that streams while the database goes away", token_delay=0.05))
    stopped = threading.Event()

    def stop_the_database(piece: str) -> None:
        if not stopped.is_set():
            stopped.set()
            postgres.stop(immediate=True)

    try:
        result = client.execute_sync("second question", session_id, stream_to=stop_the_database)
        assert result["response"] == "a long answer that streams while the database goes away"
        assert "saved on this machine" in result["notice"] and result["message_id"] is None
        assert ("saved locally", "1 message(s) waiting for the database") in client.diagnose()
        requests = len(model_env.chat_requests())
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            client.execute_sync("third question, while it is down", session_id)
        assert len(model_env.chat_requests()) == requests, "no model is called for a turn that cannot be stored"
    finally:
        postgres.start()
    client.execute_sync("fourth question, once it is back", session_id)
    contents = [m["content"] for m in client.load_session(session_id)["messages"]]
    assert contents == [
        "first question", "Echo: first question",
        "second question", "a long answer that streams while the database goes away",
        "fourth question, once it is back", "Echo: fourth question, once it is back",
    ], "nothing lost, nothing twice, in order"
    assert ("saved locally", "none waiting") in client.diagnose()
    client.session_manager.close()


def test_a_write_sharee_answers_in_a_session_without_a_model_and_leaves_the_model_to_its_owner(model_env, postgres, monkeypatch):
    """The first answer pins the session's model, but only its owner may set it: a sharee's turn still succeeds."""
    owner, sharee = (postgres.create_user(f"{who}_{uuid.uuid4().hex[:8]}") for who in ("owner", "sharee"))

    def store_of(role: str) -> str:
        return f"postgresql://{role}@/{DATABASE}?host={quote(str(postgres.socket_dir))}&port=5432"

    mine = PostgresStore(store_of(owner))
    session_id = mine.create_session(title="no model yet")
    mine.share(session_id, sharee, write=True)
    theirs = OblixClient(store=store_of(sharee))
    result = theirs.execute_sync("a question from a colleague", session_id)
    assert result["response"] == "Echo: a question from a colleague"
    seen = mine.get_session(session_id)
    assert [m["content"] for m in seen["messages"]] == ["a question from a colleague", "Echo: a question from a colleague"]
    assert not seen.get("model"), "the model is the owner's to pin"
    theirs.session_manager.close()
    mine.close()
