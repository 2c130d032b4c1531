"""The chat panel driven in-process, as a front end's clicks would drive it, against the loopback server."""

from __future__ import annotations

import base64
import html
import json

import pytest
from model_server import Behavior
from traces import assert_fully_traced, make_sessions, traces
from waiting import wait_until

from oblix_jupyter.client import OblixClient
from oblix_jupyter.frontends.panel import NO_SESSION, ChatPanel, notebook_variables
from oblix_jupyter.kernel.binding import NotebookBinding

pytestmark = pytest.mark.timeout(60)
NOTEBOOK = "work/analysis.ipynb"


def rendered(panel: ChatPanel) -> list[str]:
    """The HTML of every message the panel shows, in order."""
    texts = []
    for view in panel.messages.children:
        for output in getattr(view, "outputs", ()):
            texts.append(output["data"]["text/html"])
    return texts


@pytest.fixture
def client(model_env):
    return OblixClient()


@pytest.fixture
def binding(client, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    bound = NotebookBinding(client, {})
    bound.reported_path = NOTEBOOK
    return bound


@pytest.fixture
def panel(client, binding):
    panel = ChatPanel(client, namespace={"df": [1, 2], "threshold": 0.5, "_hidden": 1, "In": [], "_i3": ""}, binding=binding)
    yield panel
    panel.stop()
    panel.wait(10)
    panel.close()


def ask(panel: ChatPanel, text: str) -> None:
    panel.textarea.value = text
    panel.send_button.click()


def test_send_streams_the_answer_and_stores_the_exchange(panel, client, server):
    server.default = Behavior(reply="Hello **world**, in several streamed words", first_token_delay=0.3, token_delay=0.03)
    assert panel.session_id is None and panel.session_picker.value == NO_SESSION
    ask(panel, "first question")
    assert panel.stop_button.layout.display is None and panel.textarea.value == "", "the prompt left the box"
    working = rendered(panel)[-1]
    assert "class='oblix-waiting'" in working and "Waiting for openai/test-model…" in working
    seen = []
    panel._turn.answer_view.observe(lambda change: seen.append(change["new"][0]["data"]["text/html"]), names="outputs")
    assert any("first question" in text for text in rendered(panel)), "the prompt shows at once"
    assert panel.wait(20)

    streamed = [text for text in seen if "▌" in text]
    assert streamed and "▌</p>" in streamed[0] and "several streamed words" not in streamed[0], "the answer streamed in"
    assert "oblix-waiting" not in streamed[0], "the text replaced the waiting line"
    assert panel.stop_button.layout.display == "none"
    texts = rendered(panel)
    assert len(texts) == 2 and "<b>User</b>" in texts[0] and "first question" in texts[0]
    assert "<b>Assistant</b> · openai/test-model" in texts[1] and "<p>Hello <strong>world</strong>, in several streamed words</p>" in texts[1]
    assert panel.textarea.value == "" and panel.notice.layout.display == "none"
    session = client.session_manager.get_session(panel.session_id)
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "first question"),
        ("assistant", "Hello **world**, in several streamed words"),
    ]
    assert client.session_manager.bound_session(NOTEBOOK) == panel.session_id
    assert session["title"] == "analysis"

    panel.explain_toggle.value = True
    assert panel.explain_output.layout.display is None
    assert "Context sent" in panel.explain_output.outputs[0]["data"]["text/html"]
    panel.explain_toggle.value = False
    assert panel.explain_output.layout.display == "none"


def test_stop_keeps_the_partial_answer_marked_interrupted(panel, client, server):
    server.default = Behavior(reply="word " * 300, token_delay=0.02)
    ask(panel, "a long story please")
    wait_until(lambda: (turn := panel._turn) is not None and len(turn.text) > 20, 10, "the answer to stream")
    panel.stop_button.click()
    assert panel.wait(20)
    user, answer = client.session_manager.get_session(panel.session_id)["messages"]
    assert answer["status"] == "interrupted" and 0 < len(answer["content"]) < len("word " * 300)
    assert "Interrupted" in rendered(panel)[-1] and "interrupted" in rendered(panel)[-1].splitlines()[0]
    assert panel.notice.value == "", "the stored answer says it was interrupted, once"
    assert panel.textarea.value == ""
    classes = panel.messages.children[-1]._dom_classes
    assert "oblix-incomplete" in classes and "oblix-assistant" in classes


def test_the_seconds_count_while_the_model_holds_its_first_token(panel, server):
    server.default = Behavior(reply="late but here", first_token_delay=1.5)
    ask(panel, "take your time")
    wait_until(lambda: "Waiting for openai/test-model… 1 s" in rendered(panel)[-1], 10, "the waiting line to count a second")
    assert panel.wait(20)
    assert "late but here" in rendered(panel)[-1] and "oblix-waiting" not in rendered(panel)[-1]


def test_an_error_gives_the_prompt_back(panel, client, server):
    server.for_model("test-model", Behavior(status=500, first_token_delay=0.5))
    ask(panel, "please keep this text")
    assert panel.textarea.value == "", "the prompt left the box when sent"
    assert panel.wait(30)
    assert panel.notice.value == "", "the failure record says it, once"
    failed = [view for view in panel.messages.children if "oblix-failed" in getattr(view, "_dom_classes", ())]
    assert len(failed) == 1 and "HTTP 500" in failed[0].outputs[0]["data"]["text/html"]
    assert panel.textarea.value == "please keep this text"
    assert not panel.send_button.disabled and panel.stop_button.layout.display == "none"
    messages = client.session_manager.get_session(panel.session_id)["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["please keep this text"]

    # Retry asks it again: the prompt is not stored twice, and the answer shows once while it streams.
    assert panel.retry_button.layout.display is None, "Retry is offered after a failed turn"
    server.for_model("test-model", Behavior(reply="an answer at last", token_delay=0.2))
    panel.textarea.value = "something else typed meanwhile"
    panel.retry_button.click()
    assert panel.retry_button.layout.display == "none" and panel.textarea.value == "something else typed meanwhile"
    wait_until(lambda: any("an answer" in html for html in rendered(panel)), 10, "the retried answer to stream")
    assert sum("an answer" in html for html in rendered(panel)) == 1
    assert sum("please keep this text" in html for html in rendered(panel)) == 1, "the stored prompt is the retried one"
    assert panel.wait(30)
    messages = client.session_manager.get_session(panel.session_id)["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["please keep this text"]
    assert messages[-1]["content"] == "an answer at last" and sum("an answer at last" in html for html in rendered(panel)) == 1
    assert panel.retry_button.layout.display == "none", "nothing failed any more"


def test_jump_to_latest_gives_the_list_a_new_box_around_the_same_messages(panel):
    old = panel.conversation
    panel.jump_button.click()
    assert panel.conversation is not old and panel.conversation in panel.children and old not in panel.children
    assert panel.conversation.children == (panel.messages,) and old.comm is None, "the old box is closed, the messages kept"
    assert "oblix-scroll" in panel.conversation._dom_classes


def test_session_picker_new_rename_and_delete_with_confirmation(panel, client, binding):
    store = client.session_manager
    other = store.create_session(title="older work")
    store.save_message(other, "old question")
    mine = binding.session_id(create=True)
    panel.refresh()
    assert panel.session_id == mine
    assert panel.session_picker.options[0][1] == mine, "the notebook's session comes first"
    assert other in [value for _, value in panel.session_picker.options]

    panel.session_picker.value = other
    assert panel.session_id == other and store.bound_session(NOTEBOOK) == other
    assert "old question" in rendered(panel)[0]
    assert panel.title_field.value == "older work"

    panel.new_button.click()
    fresh = panel.session_id
    assert fresh not in (mine, other) and store.bound_session(NOTEBOOK) == fresh
    assert store.get_session(fresh)["title"].startswith("Chat Session") and rendered(panel) == [], "named by its first prompt, later"

    panel.title_field.value = "Renamed session"
    panel.rename_button.click()
    assert store.get_session(fresh)["title"] == "Renamed session"
    assert panel.session_picker.options[0][0].startswith("Renamed session")

    panel.delete_button.click()
    assert panel.delete_button.description == "Confirm delete" and store.load_session(fresh) is not None
    assert "Delete session 'Renamed session'" in html.unescape(panel.notice.value) and "0 messages" in panel.notice.value, "it says what would go"
    panel.cancel_delete_button.click()
    assert store.load_session(fresh) is not None and panel.delete_button.description == "Delete" and panel.notice.value == ""
    assert panel.cancel_delete_button.layout.display == "none"
    panel.delete_button.click()
    panel.delete_button.click()
    assert store.load_session(fresh) is None and panel.session_id is None
    assert panel.session_picker.value == NO_SESSION and panel.delete_button.description == "Delete"
    assert "Deleted session 'Renamed session'" in html.unescape(panel.notice.value)


@pytest.mark.timeout(180)
def test_delete_removes_every_trace_that_another_process_left(panel, client):
    base_dir = client.session_manager.base_dir
    doomed, kept = make_sessions(base_dir, NOTEBOOK)
    before = assert_fully_traced(base_dir, doomed, NOTEBOOK)
    kept_traces = traces(base_dir, kept)
    panel.refresh()
    assert panel.session_id == doomed
    panel.delete_button.click()
    assert traces(base_dir, doomed) == before, "the first click only asks"
    panel.delete_button.click()
    assert "Deleted session" in panel.notice.value and panel.session_id is None
    assert traces(base_dir, doomed) == []
    assert traces(base_dir, kept) == kept_traces


def test_model_apply_pins_the_model_and_fallbacks(panel, client, server):
    panel.model_field.value = "openai/other-model"
    panel.fallbacks_field.value = "openai/backup, openai/second"
    panel.apply_model_button.click()
    session = client.session_manager.get_session(panel.session_id)
    assert session["model"] == "openai/other-model"
    assert session["fallback_models"] == ["openai/backup", "openai/second"]
    assert "Model: openai/other-model; fallbacks: openai/backup, openai/second" in panel.notice.value
    ask(panel, "which model?")
    assert panel.wait(20)
    assert server.chat_requests()[-1]["model"] == "other-model"
    assert "openai/other-model" in rendered(panel)[-1].splitlines()[0]


def test_refresh_follows_turns_and_bindings_made_elsewhere(panel, client, binding):
    store = client.session_manager
    session_id = binding.session_id(create=True)
    panel.refresh()
    assert not panel.follower.check()

    OblixClient().execute_sync("asked from a %%oblix cell", session_id)
    assert panel.follower.check()
    assert any("asked from a %%oblix cell" in text for text in rendered(panel))

    panel.poll_interval = 0.05
    panel._view_count = 1  # a front end shows the panel: it watches the session file
    OblixClient().execute_sync("asked from another kernel", session_id)
    wait_until(lambda: any("asked from another kernel" in text for text in rendered(panel)), 10, "the other kernel's turn to show")
    elsewhere = store.create_session(title="chosen with %oblix use")
    binding.use(elsewhere)
    wait_until(lambda: panel.session_id == elsewhere, 10, "the panel to follow the binding")
    poller = panel.follower.thread
    panel._view_count = 0
    poller.join(5)
    assert not poller.is_alive(), "no view left: the watching stops"


def test_context_chips_offer_user_variables_and_reach_the_model(model_env):
    namespace = {"df": [3, 1, 2], "threshold": 0.125, "_private": 3, "In": [], "Out": {}, "_i2": "", "get_ipython": None}
    assert notebook_variables(namespace) == ["df", "threshold"]
    panel = ChatPanel(OblixClient(), namespace=namespace)
    try:
        assert list(panel.variables_input.allowed_tags) == ["df", "threshold"]
        panel.variables_input.value = ["threshold"]
        ask(panel, "is this sensible?")
        assert panel.wait(20)
        sent = json.dumps(model_env.chat_requests()[-1]["messages"])
        assert "threshold" in sent and "0.125" in sent and "[3, 1, 2]" not in sent
        del namespace["df"]
        namespace["late"] = 4
        panel.follower.check()
        assert list(panel.variables_input.allowed_tags) == ["late", "threshold"]
    finally:
        panel.close()


def test_closing_stops_everything(panel):
    panel.poll_interval = 0.05
    panel._view_count = 1
    poller = panel.follower.thread
    assert poller.is_alive()
    panel.close()
    poller.join(5)
    assert not poller.is_alive()
    children = panel.messages.children
    panel.refresh()  # after close, a late refresh from the magics is harmless
    assert panel.messages.children is children


def test_the_session_picker_searches_titles_and_messages(panel, client):
    store = client.session_manager
    merge = store.create_session(title="Joining tables")
    store.save_message(merge, "How do I merge two frames on a customer key?")
    other = store.create_session(title="Plotting")
    store.save_message(other, "a histogram of prices")
    panel.refresh()
    assert {merge, other} <= set(value for _, value in panel.session_picker.options)
    panel.search_field.value = "customer key"
    labels = {value: label for label, value in panel.session_picker.options}
    assert merge in labels and other not in labels and labels[merge].startswith("Joining tables · just now · 1 message")
    panel.search_field.value = ""
    assert other in {value for _, value in panel.session_picker.options}


def test_every_answer_says_what_it_was_sent_even_in_a_panel_opened_after_the_turn(client, binding, server):
    session_id = client.create_session_sync(title="records")
    client.execute_sync("first question", session_id)
    client.execute_sync("second question", session_id)
    hostile = "<img src=http://127.0.0.1:1/x onerror=alert(1)>"
    client.session_manager.save_message(session_id, "from a file", role="assistant", sent={"v": 1, "variables": [[hostile, 3]]})
    binding.use(session_id)

    fresh = ChatPanel(client, namespace={}, binding=binding)  # a new kernel's panel: it never saw these turns' plans
    try:
        answers = [text for text in rendered(fresh) if "<b>Assistant</b>" in text]
        assert len(answers) == 3
        assert all(text.count("<details class='oblix-sent'><summary>what it was sent</summary>") == 1 for text in answers)
        assert "no earlier message sent" in answers[0] and "sent msg_1-2 (recent)" in answers[1]
        assert "<img" not in answers[2] and html.escape(hostile) in answers[2]
        fresh.explain_toggle.value = True
        assert "what it was sent" in fresh.explain_output.outputs[0]["data"]["text/plain"]
    finally:
        fresh.close()
    client.wait_for_background()


def test_a_prompt_s_images_show_as_thumbnails_and_a_forged_entry_stays_inert(client, binding):
    session_id = client.create_session_sync(title="figures")
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    store = client.session_manager
    kept = store.save_attachment(session_id, png)
    svg = store.save_attachment(session_id, b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>")
    hostile = "<img src=x onerror=alert(1)>"
    store.save_message(session_id, "look", attachments=[
        {"id": kept, "mime": "image/png", "label": hostile, "width": 1, "height": 1},
        {"id": svg, "mime": "image/svg+xml", "label": "scripted"},  # a forged entry: only PNG and JPEG are pictures
        {"id": "../../etc/passwd", "mime": "image/png", "label": "nowhere"},
    ])
    binding.use(session_id)
    panel = ChatPanel(client, namespace={}, binding=binding)
    try:
        (shown,) = rendered(panel)
        assert f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}' alt='{html.escape(hostile)}'>" in shown
        assert shown.count("<img") == 1 and "svg" not in shown.split("oblix-thumbs", 1)[1]
        assert shown.count("(not available)") == 2 and "<figcaption>nowhere</figcaption>" in shown
    finally:
        panel.close()
