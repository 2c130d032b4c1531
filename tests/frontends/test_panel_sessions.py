"""Sessions in the chat panel: named after their first prompt, told apart by their last activity, one notice per event.

The panel is driven in-process as a front end's clicks drive it, against the loopback
model server and a real session store (the fixtures of ``test_panel``).
"""

from __future__ import annotations

import html
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from model_server import Behavior
from test_panel import ask, binding, client, panel, rendered  # noqa: F401  (fixtures)

from oblix_jupyter.client import OblixClient
from oblix_jupyter.turn import PROMPT_TITLE_CHARS, TITLE_FROM_PROMPT
from oblix_jupyter.frontends.panel import last_activity

pytestmark = pytest.mark.timeout(60)


def test_new_asks_for_nothing_and_is_named_after_its_first_prompt(panel, client, binding, server):  # noqa: F811
    store = client.session_manager
    first = binding.session_id(create=True)
    panel.refresh()
    panel.new_button.click()
    fresh = panel.session_id
    assert fresh != first and store.bound_session(binding.key) == fresh
    session = store.get_session(fresh)
    assert session["title"].startswith("Chat Session") and session["metadata"] == {"notebook": binding.key, TITLE_FROM_PROMPT: True}

    ask(panel, "  How do I merge two frames on a customer key?\n\nHere is what I tried: pd.merge(a, b)")
    assert panel.wait(20)
    session = store.get_session(fresh)
    assert session["title"] == "How do I merge two frames on a customer key?"
    assert session["metadata"] == {"notebook": binding.key}, "named once: the mark is gone"
    labels = dict((value, label) for label, value in panel.session_picker.options)
    assert labels[fresh] == "How do I merge two frames on a customer key? · just now · 2 messages"
    assert labels[first].startswith(f"{store.get_session(first)['title']} · just now · 0 messages")

    ask(panel, "And with two keys?")
    assert panel.wait(20)
    assert store.get_session(fresh)["title"] == "How do I merge two frames on a customer key?", "only the first prompt names it"


def test_titles_from_prompts_are_short_redacted_and_only_where_asked_for(model_env):
    client = OblixClient()
    sdk = client.create_session_sync()  # the Oblix SDK's sessions keep the title they were given
    client.execute_sync("hello there", sdk)
    assert client.get_session(sdk)["title"].startswith("Chat Session")
    chosen = client.create_session_sync(title="Mine", title_from_prompt=True)
    client.execute_sync("hello there", chosen)
    assert client.get_session(chosen)["title"] == "Mine"

    long = client.create_session_sync(title_from_prompt=True)
    words = "Why does my groupby drop the rows whose keys are NaN when I count them per region and month"
    result = client.execute_sync(words, long)
    title = client.get_session(long)["title"]
    assert title.endswith("…") and len(title) <= PROMPT_TITLE_CHARS and words.startswith(title[:-1]) and words[len(title) - 1] == " "
    assert result["session_title"] == title, "the footer names the session as it is now called"

    secret = client.create_session_sync(title_from_prompt=True)
    client.execute_sync("my key is sk-proj-abcdefghijklmnop0123456789 why 401", secret)
    assert "abcdefghijklmnop" not in client.get_session(secret)["title"] and "withheld" in client.get_session(secret)["title"]

    failed = client.create_session_sync(title_from_prompt=True)
    model_env.enqueue(Behavior(status=500))
    with pytest.raises(Exception):
        client.execute_sync("a question the server fails on", failed)
    assert client.get_session(failed)["title"] == "a question the server fails on", "the prompt is kept, so it names the session"
    client.wait_for_background()


@pytest.mark.timeout(120)
def test_on_the_database_a_colleague_adding_to_a_shared_session_does_not_name_it(model_env, postgres):
    from test_postgres_frontends import store_url

    suffix = uuid.uuid4().hex[:6]
    alice_role, bob_role = (postgres.create_user(f"{name}_{suffix}") for name in ("alice", "bob"))
    alice, bob = OblixClient(store=store_url(postgres, alice_role)), OblixClient(store=store_url(postgres, bob_role))
    try:
        session_id = alice.create_session_sync(title_from_prompt=True)
        alice.share(session_id, bob_role, write=True)
        bob.execute_sync("bob asks first", session_id)
        session = alice.get_session(session_id)
        assert session["title"].startswith("Chat Session") and session["metadata"] == {TITLE_FROM_PROMPT: True}, "the title is the owner's"
        alice.execute_sync("alice names it", session_id)
        session = alice.get_session(session_id)
        assert session["title"] == "alice names it" and session["metadata"] == {}
        alice.wait_for_background()
        bob.wait_for_background()
    finally:
        alice.session_manager.close()
        bob.session_manager.close()


def test_a_notice_lasts_until_the_session_moves_on_from_anywhere(panel, client, server):  # noqa: F811
    ask(panel, "first")
    assert panel.wait(20)
    panel.title_field.value = "Renamed here"
    panel.rename_button.click()
    assert "Renamed to" in html.unescape(panel.notice.value)
    panel.refresh()
    assert panel.follower.check() is False and "Renamed to" in html.unescape(panel.notice.value), "nothing happened since"
    client.execute_sync("a turn from a %%oblix cell", panel.session_id)
    assert panel.follower.check() is True
    assert panel.notice.value == "" and panel.notice.layout.display == "none", "the next turn, made elsewhere, took it away"


def test_stopped_before_any_text_says_so_once(panel, client, server):  # noqa: F811
    server.default = Behavior(pieces=["", "too late"], first_token_delay=1.0)  # a first chunk without text, as many servers send
    ask(panel, "slow one")
    panel.stop_button.click()
    assert panel.wait(20)
    answer = client.get_session(panel.session_id)["messages"][-1]
    assert answer["status"] == "interrupted" and answer["content"] == ""
    shown = rendered(panel)[-1]
    assert "Stopped before any of the answer arrived." in shown and "part of the answer" not in shown
    assert panel.notice.value == "", "the message says it; no notice repeats it"


def test_last_activity_reads_as_people_say_it():
    now = datetime(2025, 6, 15, 12, 0, tzinfo=timezone.utc)

    def ago(**delta: float) -> str:
        return last_activity((now - timedelta(**delta)).isoformat(), now)

    assert [ago(seconds=20), ago(minutes=5), ago(hours=2, minutes=59)] == ["just now", "5 min ago", "2 h ago"]
    day = (now - timedelta(days=3)).astimezone()
    assert ago(days=3) == f"{day.day} {day:%b}"
    assert ago(days=400).endswith(str((now - timedelta(days=400)).astimezone().year))
    assert last_activity("2025-06-15T11:58:00", now) == "2 min ago", "a stored time without a zone is UTC"
