"""Failed turns through ``OblixClient``, on the file store and on PostgreSQL: a prompt is stored once and sent once.

A user whose turn failed asks again. The session must then hold the prompt once (the
failure recorded after it, the answer after that), and the model must never receive a
failed prompt twice in one request, nor the error lines, nor a prompt that got no answer.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import TEST_MODEL
from model_server import Behavior

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import BadArguments, ModelError
from oblix_jupyter.store.postgres import PostgresStore

pytestmark = pytest.mark.timeout(120)
QUESTION = "Which city has the largest single order?"
SERVER_ERROR = f"{TEST_MODEL} failed with HTTP 500: Scripted error (HTTP 500)"


@pytest.fixture(params=["files", "postgres"])
def client(request, model_env, monkeypatch):
    """A client configured by the environment, its sessions in files or in a new database user's PostgreSQL store."""
    if request.param == "postgres":
        postgres = request.getfixturevalue("postgres")
        monkeypatch.setenv("OBLIX_STORE", postgres.dsn(postgres.create_user()))
    opened = OblixClient()
    assert isinstance(opened.session_manager, PostgresStore) is (request.param == "postgres")
    yield opened
    opened.wait_for_background()
    if isinstance(opened.session_manager, PostgresStore):
        opened.session_manager.close()


def sent(server) -> list[list[tuple[str, str]]]:
    """Every request's messages, as (role, content)."""
    return [[(m["role"], m["content"]) for m in request["messages"]] for request in server.chat_requests()]


def test_two_failures_then_a_retry_store_the_prompt_once_and_send_it_once_per_attempt(client, server):
    session_id = client.create_session_sync(title="orders")
    client.execute_sync("Load the orders table.", session_id)
    server.enqueue(Behavior(status=500), Behavior(status=500))
    for _ in range(2):
        with pytest.raises(ModelError) as failure:
            client.execute_sync(QUESTION, session_id)
        assert str(failure.value) == SERVER_ERROR, "one line: the model and what the server said, once"
    assert client.failed_prompt(session_id) == QUESTION
    result = client.execute_sync(QUESTION, session_id)  # the cell run again

    assert result["response"] == f"Echo: {QUESTION}" and result["message_id"] == "msg_6"
    messages = client.load_session(session_id)["messages"]
    assert [(m["role"], m["content"], m.get("status")) for m in messages] == [
        ("user", "Load the orders table.", None),
        ("assistant", "Echo: Load the orders table.", None),
        ("user", QUESTION, None),
        ("assistant", SERVER_ERROR, "failed"),
        ("assistant", SERVER_ERROR, "failed"),
        ("assistant", f"Echo: {QUESTION}", None),
    ]
    assert all(m["model"] == TEST_MODEL for m in messages if m["role"] == "assistant")
    attempts = sent(server)[1:]
    assert len(attempts) == 3
    for request in attempts:  # each attempt: the conversation before the question, then the question, once
        assert request == [("user", "Load the orders table."), ("assistant", "Echo: Load the orders table."), ("user", QUESTION)]
    assert client.failed_prompt(session_id) is None

    client.execute_sync("And the smallest?", session_id)
    assert sent(server)[-1] == [
        ("user", "Load the orders table."), ("assistant", "Echo: Load the orders table."),
        ("user", QUESTION), ("assistant", f"Echo: {QUESTION}"),
        ("user", "And the smallest?"),
    ], "the failures are not sent, the retried exchange is, once"


def test_a_prompt_that_got_no_answer_is_never_sent_again_and_another_prompt_is_a_new_turn(client, server):
    session_id = client.create_session_sync()
    server.enqueue(Behavior(status=503))
    with pytest.raises(ModelError, match="HTTP 503"):
        client.execute_sync("the lost question", session_id)
    client.execute_sync("a different question", session_id)
    client.execute_sync("a third one", session_id)
    assert sent(server)[1:] == [
        [("user", "a different question")],
        [("user", "a different question"), ("assistant", "Echo: a different question"), ("user", "a third one")],
    ]
    contents = [m["content"] for m in client.load_session(session_id)["messages"]]
    assert contents.count("the lost question") == 1 and len(contents) == 6
    assert client.failed_prompt(session_id) is None


def test_retry_asks_the_failed_prompt_again_and_refuses_when_nothing_failed(client, server):
    session_id = client.create_session_sync()
    with pytest.raises(BadArguments, match="nothing to retry"):
        client.retry_sync(session_id)
    server.enqueue(Behavior(reply="one two three four five", drop_after=2))
    with pytest.raises(ModelError) as failure:
        client.execute_sync(QUESTION, session_id)
    assert failure.value.partial == "one two "
    assert client.failed_prompt(session_id) == QUESTION, "a partial answer that broke off is a failed turn too"
    result = client.retry_sync(session_id)
    assert result["response"] == f"Echo: {QUESTION}"
    assert sent(server)[-1] == [("user", QUESTION)], "neither the prompt again nor its broken answer"
    server.enqueue(Behavior(status=500))
    with pytest.raises(ModelError):
        client.execute_sync("second question", session_id)
    again = asyncio.run(client.retry(session_id))
    assert again["response"] == "Echo: second question"
    messages = client.load_session(session_id)["messages"]
    assert [(m["role"], m.get("status")) for m in messages] == [
        ("user", None), ("assistant", "error"), ("assistant", None),
        ("user", None), ("assistant", "failed"), ("assistant", None),
    ]
    assert [m["content"] for m in messages if m["role"] == "user"] == [QUESTION, "second question"]
    with pytest.raises(BadArguments, match="nothing to retry"):
        client.retry_sync(session_id)


def test_a_retry_sends_the_failed_prompts_images_again(client, server, monkeypatch):
    import io

    from PIL import Image

    from oblix_jupyter.kernel.images import NotebookImage

    monkeypatch.setenv("OBLIX_VISION_MODELS", TEST_MODEL)
    session_id = client.create_session_sync(title="figures")
    png = io.BytesIO()
    Image.new("RGB", (640, 480), "white").save(png, "PNG")
    figure = NotebookImage("figure from cell 5", "image/png", png.getvalue(), 5, 640, 480)
    server.enqueue(Behavior(status=500))
    with pytest.raises(ModelError):
        client.execute_sync("Why does the curve bend?", session_id, images=[figure])
    shown = client.failed_images(session_id)
    assert [(image.label, image.width, image.height) for image in shown] == [("figure from cell 5", 640, 480)], "read back from the store"
    client.retry_sync(session_id)

    failed, retried = server.chat_requests()[-2:]
    for request in (failed, retried):
        parts = [part["type"] for part in request["messages"][-1]["content"]]
        assert parts == ["text", "image_url"], "the retried prompt carries its picture, as the first attempt did"
    messages = client.load_session(session_id)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant"] and len(messages[0]["attachments"]) == 1
    assert client.failed_images(session_id) == [], "nothing failed now"
