"""``OblixClient()`` on the PostgreSQL store chosen by ``OBLIX_STORE``: turns, the selector's vectors, delete."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
from conftest import TEST_MODEL
from postgres_server import DATABASE

from oblix_jupyter import OblixClient
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
