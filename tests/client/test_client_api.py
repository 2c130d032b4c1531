"""``OblixClient`` through a model registered with litellm itself, which records exactly what it was sent.

simonw/llm's MockModel idea: the client, the selector, the gateway and the store all run
for real, and litellm calls a provider of ours in-process (``custom_provider_map``), so
a test can assert on the very messages that went out. The loopback HTTP server tests
(``test_client.py``) stay for what only a network shows. Everything a front end does is
a call here too: three lines of Python can do what the CLI, the magics or the panel can.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import BadArguments, SessionNotFound
from oblix_jupyter.models.gateway import litellm_module
from oblix_jupyter.store.shape import now_iso

PROVIDER = "recorded"


class Recorded:
    """The registered model's log and its canned replies (one per call, the last one repeated)."""

    def __init__(self) -> None:
        self.sent: list[list[dict[str, Any]]] = []
        self.replies = ["Recorded answer."]

    def reply(self, messages: list[dict[str, Any]]) -> str:
        self.sent.append([{"role": m["role"], "content": m["content"]} for m in messages])
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


@pytest.fixture
def recorded(monkeypatch):
    litellm = litellm_module()
    log = Recorded()

    class Handler(litellm.CustomLLM):
        def completion(self, model, messages, *args, model_response=None, **kwargs):
            model_response.choices[0].message.content = log.reply(messages)
            return model_response

        def streaming(self, model, messages, *args, **kwargs):
            text = log.reply(messages)
            for number, word in enumerate(text.split(" ")):
                piece = word if number == 0 else " " + word
                yield {"text": piece, "is_finished": False, "finish_reason": "", "usage": None, "index": 0, "tool_use": None}
            usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
            yield {"text": "", "is_finished": True, "finish_reason": "stop", "usage": usage, "index": 0, "tool_use": None}

    monkeypatch.setattr(litellm, "custom_provider_map", [*litellm.custom_provider_map, {"provider": PROVIDER, "custom_handler": Handler()}])
    litellm.utils.custom_llm_setup()
    return log


@pytest.fixture
def client(recorded, tmp_path):
    return OblixClient(model=f"{PROVIDER}/echo", store=tmp_path / "sessions", semantic=False)


def test_a_turn_sends_the_stored_history_and_the_prompt_and_stores_the_exchange(client, recorded):
    session_id = client.create_session_sync(title="Support", initial_context={"tier": "premium"})
    recorded.replies = ["First answer.", "Second answer."]
    streamed: list[str] = []
    first = client.execute_sync("Hello there", session_id, stream_to=streamed.append)
    second = client.execute_sync("And again?", session_id)

    assert first["response"] == "First answer." and "".join(streamed) == "First answer."
    assert second["response"] == "Second answer." and second["model"] == f"{PROVIDER}/echo"
    system, *conversation = recorded.sent[-1]
    assert system["role"] == "system" and '"tier": "premium"' in system["content"]
    assert conversation == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "And again?"},
    ]
    stored = client.get_session(session_id)
    assert [(m["id"], m["role"], m["content"]) for m in stored["messages"]] == [
        ("msg_1", "user", "Hello there"),
        ("msg_2", "assistant", "First answer."),
        ("msg_3", "user", "And again?"),
        ("msg_4", "assistant", "Second answer."),
    ]
    assert stored["model"] == f"{PROVIDER}/echo" and stored["messages"][-1]["usage"]["completion_tokens"] == 3


def test_a_pinned_message_is_sent_when_the_conversation_does_not_fit(recorded, tmp_path):
    client = OblixClient(model=f"{PROVIDER}/echo", store=tmp_path / "sessions", semantic=False, max_input_tokens=400)
    session_id = client.create_session_sync()
    for number in range(12):
        if number == 2:
            client.execute_sync("The dataset is iris.csv", session_id)  # msg_5: neither the first exchange nor recent
        client.execute_sync(f"unrelated chatter about the weather, number {number}, " * 3, session_id)
    client.execute_sync("what about the colours of birds?", session_id)
    assert {"role": "user", "content": "The dataset is iris.csv"} not in recorded.sent[-1], "not sent unpinned"
    assert client.pin_message(session_id, "msg_5") == ["msg_5"]
    client.execute_sync("what about the colours of birds?", session_id)
    sent = recorded.sent[-1]
    assert {"role": "user", "content": "The dataset is iris.csv"} in sent
    assert len([m for m in sent if m["role"] != "system"]) < 2 * 14 + 1, "the window is too small for everything"
    assert client.pin_message(session_id, "msg_5", pinned=False) == []
    with pytest.raises(BadArguments, match="no message 'msg_99'"):
        client.pin_message(session_id, "msg_99")


def test_everything_a_front_end_does_is_a_client_call(client, recorded, tmp_path):
    session_id = client.create_session_sync(title="Draft")
    client.execute_sync("question", session_id)
    assert client.rename_session(session_id, "Final")["title"] == "Final"
    assert client.set_model(session_id, f"{PROVIDER}/other", "openai/a, openai/b")[:3] == [f"{PROVIDER}/other", "openai/a", "openai/b"]
    assert client.update_context(session_id, {"dataset": "iris", "rows": 150}, clear=[]) == {"dataset": "iris", "rows": 150}
    assert client.update_context(session_id, clear=["rows"]) == {"dataset": "iris"}
    assert [s["id"] for s in client.search_sessions("QUESTION")] == [session_id]

    client.bind("work/analysis.ipynb", session_id)
    assert client.bound_session("work/analysis.ipynb") == session_id and client.bindings() == {"work/analysis.ipynb": session_id}
    path = client.export_session(session_id, tmp_path / "out" / "final.json")
    copy = client.import_session(path)
    assert copy != session_id and client.get_session(copy)["messages"] == client.get_session(session_id)["messages"]
    before = client.session_version(session_id)
    client.execute_sync("one more", session_id)
    assert client.session_version(session_id) != before

    # Stamps run ahead of the clock by a millisecond per change made within one (``change_time``):
    # "not updated within 0 s" holds for both sessions once the clock has passed the newest stamp.
    newest = max(client.get_session(s)["updated_at"] for s in (session_id, copy))
    while now_iso() <= newest:
        time.sleep(0.001)
    assert sorted(client.prune_sessions(timedelta(0), dry_run=True)) == sorted([session_id, copy])
    assert client.delete_session(copy) is True
    assert client.bound_session("work/analysis.ipynb") == session_id
    assert client.delete_session(session_id) is True and client.bindings() == {}
    with pytest.raises(SessionNotFound):
        client.get_session(session_id)
    rows = dict(client.diagnose())
    assert rows["sessions"] == "0" and rows["unreadable"] == "none" and rows["store"] == str(tmp_path / "sessions")
