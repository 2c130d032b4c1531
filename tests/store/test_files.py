"""The storage's incremental encoder writes exactly what a full JSON dump would."""

from __future__ import annotations

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from oblix_jupyter.sessions import SessionManager
from oblix_jupyter.store.files import dump_json
from oblix_jupyter.store.written import dump_tables

KEYS = st.sampled_from(["messages", "pinned", "title", "context", "é", "a\"b", ""])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["append", "set", "replace", "delete", "document", "table"]), KEYS, VALUES, st.sampled_from(["1", "2"])),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_incremental_encoding_is_byte_identical_to_a_full_dump(operations):
    """Appends, replaced lists and changed fields, in any order, as TinyDB applies them: in place."""
    data: dict = {"_default": {"1": {"messages": []}}}
    kept: dict = {}
    for action, key, value, doc_id in operations:
        document = data["_default"].setdefault(doc_id, {})
        if action == "append":
            target = document.get(key)
            if isinstance(target, list):
                target.append(value)
            else:
                document[key] = [value]
        elif action == "set":
            document[key] = value
        elif action == "replace":
            document[key] = [value, value]
        elif action == "delete":
            document.pop(key, None)
        elif action == "document":
            data["_default"].pop(doc_id)
        else:
            data.setdefault(key or "other", {})
        fresh: dict = {}
        assert dump_tables(data, kept, fresh) == dump_json(data)
        kept = fresh


def test_non_tinydb_shapes_are_encoded_whole():
    for data in ([1, 2], {"t": [1]}, {"t": {1: {}}}, {"t": {"1": {2: "x"}}}):
        assert dump_tables(data, {}, {}) == dump_json(data)


def test_session_files_stay_exact_dumps_while_two_stores_interleave(tmp_path):
    """A second writer makes the first one's kept encoding stale: it must notice, not splice onto it."""
    first, second = SessionManager(tmp_path), SessionManager(tmp_path)
    session_id = first.create_session(title="shared", initial_context={"k": "é"})
    path = os.path.join(tmp_path, f"{session_id}.json")
    expected = []
    for number in range(30):
        writer = second if number % 7 == 3 else first
        writer.save_message(session_id, f"message {number} ✓", role="user" if number % 2 else "assistant", usage={"n": number})
        expected.append(f"message {number} ✓")
        if number % 10 == 5:
            writer.update_session(session_id, title=f"title {number}", pinned=[f"msg_{number}"])
        with open(path, "rb") as handle:
            raw = handle.read()
        assert raw == dump_json(json.loads(raw))
    assert [m["content"] for m in first.load_session(session_id)["messages"]] == expected
    assert first.load_session(session_id)["title"] == "title 25"


def test_a_reader_owns_what_it_reads(tmp_path):
    """The first reads after a write are handed the copies the store kept: changing one must reach nothing else."""
    store = SessionManager(tmp_path)
    session_id = store.create_session(title="mine")
    store.save_message(session_id, "first", usage={"tokens": 1})
    path = os.path.join(tmp_path, f"{session_id}.json")
    for number in range(4):
        if number % 2:
            store.prepare_read(session_id)  # a second copy, parsed ahead: the writer keeps the first
        read = store.load_session(session_id)
        again = store.load_session(session_id)
        assert read == again and read["messages"] is not again["messages"]
        read["messages"][0]["content"] = "changed by the reader"
        read["messages"][0]["usage"]["tokens"] = 99
        read["messages"].append({"id": "msg_x", "role": "user", "content": "smuggled"})
        read["title"] = "changed"
        store.save_message(session_id, f"next {number}")
        with open(path, "rb") as handle:
            raw = handle.read()
        assert raw == dump_json(json.loads(raw))
        stored = store.load_session(session_id)
        assert stored["title"] == "mine"
        assert [m["content"] for m in stored["messages"]] == ["first", *(f"next {n}" for n in range(number + 1))]
        assert stored["messages"][0]["usage"] == {"tokens": 1}
