"""The session store, on real TinyDB files in temporary directories and on a real PostgreSQL server.

``store`` is each of the three implementations in turn: the files, PostgreSQL (each
test as a fresh database user, who sees no other test's sessions), and ``MemoryStore``,
a store written against the abstract base alone, which shows that the base is the
whole contract; ``file_store`` is for what only the files have (file modes, damaged
files, the listing index).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pathlib
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import timedelta
from multiprocessing import get_context

import pytest
from memory_store import MemoryStore
from tinydb import TinyDB
from traces import assert_fully_traced, make_sessions, traces

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import (
    AmbiguousSessionId,
    AttachmentNotFound,
    BadArguments,
    CorruptSession,
    ImportFormatError,
    InvalidContext,
    InvalidSessionId,
    NewerSchema,
    SessionNotFound,
)
from oblix_jupyter.sessions import SessionManager
from oblix_jupyter.store.base import SessionStore
from oblix_jupyter.store.postgres import PostgresStore
from oblix_jupyter.store.shape import SEED_FIELDS

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def open_store(spec: tuple[str, str]) -> SessionStore:
    """The store a spec names, so that other threads (and, but for the memory store, processes) can open the same one."""
    kind, where = spec
    return {"files": SessionManager, "postgres": PostgresStore, "memory": MemoryStore}[kind](where)


@pytest.fixture(params=["files", "postgres", "memory"])
def store_spec(request, tmp_path) -> tuple[str, str]:
    """(kind, where): a directory, the DSN of a new database user (the server starts on first use), or a name."""
    if request.param == "files":
        return ("files", str(tmp_path / "sessions"))
    if request.param == "memory":
        return ("memory", str(tmp_path))
    server = request.getfixturevalue("postgres")
    return ("postgres", server.dsn(server.create_user()))


@pytest.fixture
def across_processes(store_spec) -> tuple[str, str]:
    """``store_spec``, for a test of other processes writing the same store (which a store in memory cannot be)."""
    if store_spec[0] == "memory":
        pytest.skip("a store in one process's memory is not shared with other processes")
    return store_spec


@pytest.fixture
def store(store_spec):
    opened = open_store(store_spec)
    yield opened
    if isinstance(opened, PostgresStore):
        opened.close()


@pytest.fixture
def file_store(tmp_path):
    return SessionManager(base_dir=tmp_path / "sessions")


@pytest.fixture
def footprint(store, store_spec, request):
    """A function returning everything the store keeps, to prove that a refused call changed nothing."""
    if store_spec[0] == "files":
        return lambda: tree(os.path.dirname(store.base_dir))
    if store_spec[0] == "memory":
        return store._shelf.contents
    server = request.getfixturevalue("postgres")
    tables = ("sessions", "messages", "shares", "bindings", "uses", "vectors", "attachments")
    return lambda: [server.admin_query(f"SELECT * FROM oblix.{table} ORDER BY 1, 2") for table in tables]


def tree(path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes, to prove nothing was touched."""
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                found[os.path.relpath(full, path)] = handle.read()
    return found


def bytes_in(value) -> list[bytes]:
    """Every byte string held anywhere in a footprint (files' contents, a row's bytea, the memory store's dicts)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return [bytes(value)]
    if isinstance(value, dict):
        return [found for item in value.values() for found in bytes_in(item)]
    if isinstance(value, (list, tuple)):
        return [found for item in value for found in bytes_in(item)]
    return []


def test_a_session_has_the_seed_shape(store):
    session_id = store.create_session(initial_context={"customer_id": "cust_123"}, title="Support")
    store.save_message(session_id, "I'm having trouble installing the software.")
    store.save_message(session_id, "What operating system?", role="assistant", model="openai/x")
    stored = store.load_session(session_id)
    assert set(SEED_FIELDS) <= set(stored)
    assert UUID4.match(stored["id"]) and stored["id"] == session_id
    assert stored["title"] == "Support"
    assert stored["context"] == {"customer_id": "cust_123"}
    assert TIME.match(stored["created_at"]) and TIME.match(stored["updated_at"])
    assert stored["updated_at"] >= stored["created_at"]
    first, second = stored["messages"]
    assert (first["id"], first["role"]) == ("msg_1", "user")
    assert (second["id"], second["role"], second["model"]) == ("msg_2", "assistant", "openai/x")
    assert set(first) == {"id", "role", "content", "timestamp"}
    assert TIME.match(first["timestamp"])


def test_the_session_file_holds_what_is_loaded(file_store):
    session_id = file_store.create_session(initial_context={"customer_id": "cust_123"}, title="Support")
    file_store.save_message(session_id, "What operating system?", role="assistant", model="openai/x")
    with TinyDB(os.path.join(file_store.base_dir, f"{session_id}.json")) as db:
        documents = db.all()
    assert documents == [file_store.load_session(session_id)]


def test_default_title_and_location(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIX_HOME", str(tmp_path / "home"))
    manager = SessionManager()
    assert manager.base_dir == str(tmp_path / "home" / "sessions")
    session = manager.load_session(manager.create_session())
    assert re.match(r"^Chat Session \d{4}-\d\d-\d\d \d\d:\d\d$", session["title"])


def test_files_and_directories_are_private(file_store):
    session_id = file_store.create_session(title="secret")
    file_store.save_message(session_id, "hello")
    assert stat.S_IMODE(os.stat(file_store.base_dir).st_mode) == 0o700
    for root, dirs, files in os.walk(file_store.base_dir):
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o700, name
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600, name


@pytest.mark.timeout(180)
def test_a_realistic_run_makes_every_directory_0700_and_every_file_0600_whatever_the_umask(tmp_path):
    home = tmp_path / "oblix-home"  # not there yet: the store makes every level of it
    make_sessions(str(home / "sessions"), "/work/a.ipynb", umask=0o022)  # sessions, appends, bindings, vectors
    seen = []
    for root, dirs, files in os.walk(home):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600, os.path.join(root, name)
        seen.append(os.path.relpath(root, home))
    assert os.path.join("sessions", ".vectors") in seen


@pytest.mark.timeout(180)
def test_prune_removes_every_trace_that_another_process_left(file_store):
    doomed, kept = make_sessions(file_store.base_dir, "/work/old.ipynb")
    assert_fully_traced(file_store.base_dir, doomed, "/work/old.ipynb")
    kept_traces = traces(file_store.base_dir, kept)
    assert file_store.prune(older_than=timedelta(days=30)) == [doomed]
    assert traces(file_store.base_dir, doomed) == []
    assert traces(file_store.base_dir, kept) == kept_traces


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", "", "..", "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a/../../x", None])
def test_path_traversal_ids_are_rejected_before_anything_is_touched(store, footprint, tmp_path, bad):
    store.create_session(title="keep")
    before = footprint()
    for call in (
        lambda: store.load_session(bad),
        lambda: store.save_message(bad, "x"),
        lambda: store.delete_session(bad),
        lambda: store.update_session(bad, title="x"),
        lambda: store.export_session(bad, tmp_path / "out.json"),
        lambda: store.resolve_id(bad),
    ):
        with pytest.raises(InvalidSessionId):
            call()
    assert footprint() == before


def test_attachments_are_kept_by_the_hash_of_their_bytes_and_go_with_their_session(store, footprint):
    session_id = store.create_session(title="figures")
    other = store.create_session(title="other")
    figure = b"\x89PNG\r\n\x1a\n a figure"
    attachment = store.save_attachment(session_id, figure)
    assert attachment == hashlib.sha256(figure).hexdigest() == store.save_attachment(session_id, figure)  # kept once
    assert store.read_attachment(session_id, attachment) == figure
    with pytest.raises(AttachmentNotFound):
        store.read_attachment(other, attachment)  # an id is the session's: another session does not reach it
    before = footprint()
    for bad in ("../" * 8 + "etc/passwd", attachment.upper(), attachment[:-1], "", ".", "*", attachment + "/..", None):
        with pytest.raises(AttachmentNotFound):
            store.read_attachment(session_id, bad)
    for data in (b"", "text", b"x" * (20 * 1024 * 1024 + 1)):
        with pytest.raises(BadArguments):
            store.save_attachment(session_id, data)
    with pytest.raises(SessionNotFound):
        store.save_attachment(str(uuid.uuid4()), figure)
    assert footprint() == before, "refused calls wrote nothing"

    assert store.delete_session(session_id)
    with pytest.raises(AttachmentNotFound):
        store.read_attachment(session_id, attachment)
    assert not any(figure in kept for kept in bytes_in(footprint())), "delete means gone, everywhere the store keeps it"


def test_unknown_ids(store):
    missing = str(uuid.uuid4())
    assert store.load_session(missing) is None
    assert store.delete_session(missing) is False
    with pytest.raises(SessionNotFound):
        store.save_message(missing, "hello")
    with pytest.raises(SessionNotFound):
        store.get_session(missing)
    assert store.load_session(missing) is None and store.list_sessions() == []


def test_list_update_delete_prune_search(store):
    ids = [store.create_session(title=f"session {n}") for n in range(5)]
    store.save_message(ids[1], "the cat sat on the mat")
    listed = store.list_sessions(limit=3)
    assert [s["id"] for s in listed] == [ids[1], ids[4], ids[3]]
    assert listed[0]["message_count"] == 1 and listed[0]["title"] == "session 1"
    assert {"id", "title", "message_count", "created_at", "updated_at"} <= set(listed[0])

    updated = store.update_session(ids[2], title="renamed", context={"k": 1}, model="openai/m")
    assert (updated["title"], updated["context"], updated["model"]) == ("renamed", {"k": 1}, "openai/m")
    assert store.list_sessions(limit=1)[0]["title"] == "renamed"
    assert store.update_session_metadata(ids[2], {"tag": "x"}) is True
    assert store.load_session(ids[2])["metadata"] == {"tag": "x"}

    assert [s["id"] for s in store.search_sessions("CAT SAT")] == [ids[1]]
    assert [s["id"] for s in store.search_sessions("renamed")] == [ids[2]]

    assert store.delete_session(ids[0]) is True
    assert store.load_session(ids[0]) is None
    assert ids[0] not in [s["id"] for s in store.list_sessions()]

    assert store.prune(older_than=timedelta(days=1)) == []
    doomed = store.prune(older_than=timedelta(seconds=0), dry_run=True)
    assert sorted(doomed) == sorted(ids[1:])
    assert len(store.list_sessions()) == 4
    store.prune(older_than=timedelta(seconds=0))
    assert store.list_sessions() == []


def test_context_must_be_json(store, footprint):
    before = footprint()
    with pytest.raises(InvalidContext, match="'when'"):
        store.create_session(initial_context={"ok": 1, "when": object()})
    assert footprint() == before
    session_id = store.create_session(initial_context={"ok": 1})
    with pytest.raises(InvalidContext, match="'bad'"):
        store.update_session(session_id, context={"bad": {1, 2}})
    assert store.load_session(session_id)["context"] == {"ok": 1}


def test_prefix_resolution(store):
    first = store.create_session()
    assert store.resolve_id(first[:8]) == first
    assert store.resolve_id(first.upper()) == first
    with pytest.raises(SessionNotFound):
        store.resolve_id("ffffffff-ffff")
    # Make an ambiguous prefix with ids chosen on purpose.
    for suffix in ("1", "2"):
        twin = dict(store.load_session(first), id=f"abcdef0{suffix}-0000-4000-8000-000000000000")
        store.add_session(twin, new_id=False)
    with pytest.raises(AmbiguousSessionId) as info:
        store.resolve_id("abcdef0")
    assert len(info.value.candidates) == 2


def test_export_import_copy(store, tmp_path):
    session_id = store.create_session(title="T", initial_context={"a": 1})
    store.save_message(session_id, "q")
    store.save_message(session_id, "a", role="assistant", model="m")
    out = tmp_path / "export.json"
    assert store.export_session(session_id, out) is True
    exported = json.loads(out.read_text())
    assert exported == store.load_session(session_id)

    new_id = store.import_session(out)
    assert new_id != session_id
    imported = store.load_session(new_id)
    assert imported["messages"] == exported["messages"] and imported["context"] == {"a": 1}
    with pytest.raises(ImportFormatError, match="already exists"):
        store.import_session(out, new_id=False)

    copy_id = store.copy_session(session_id, new_title="Branch")
    copied = store.load_session(copy_id)
    assert copied["title"] == "Branch" and copied["messages"] == exported["messages"]


def test_import_of_a_file_written_by_the_original_sdk(store, tmp_path):
    sdk = {
        "id": str(uuid.uuid4()),
        "created_at": "2023-07-15T14:30:22.123456+00:00",
        "updated_at": "2023-07-15T14:35:46.789012",
        "title": "Old chat",
        "messages": [
            {"id": str(uuid.uuid4()), "role": "user", "content": "hi", "timestamp": "2023-07-15T14:30:22.123456+00:00"},
            {"id": str(uuid.uuid4()), "role": "assistant", "content": "hello", "timestamp": "2023-07-15T14:30:25"},
        ],
        "context": {},
        "metadata": {},
    }
    path = tmp_path / "sdk.json"
    path.write_text(json.dumps(sdk, indent=2))
    session_id = store.import_session(path, new_id=False)
    assert session_id == sdk["id"]
    session = store.load_session(session_id)
    assert session["updated_at"] == "2023-07-15T14:35:46.789Z"
    assert [m["id"] for m in session["messages"]] == [m["id"] for m in sdk["messages"]]
    assert all(TIME.match(m["timestamp"]) for m in session["messages"])
    store.save_message(session_id, "next")
    assert store.load_session(session_id)["messages"][-1]["id"] == "msg_3"


@pytest.mark.parametrize(
    "content, complaint",
    [("{\"id\": ", "invalid JSON"), ("[]", "JSON object"), ('{"id": "x"}', "missing field"), ("", "empty")],
)
def test_malformed_import_creates_nothing(store, footprint, tmp_path, content, complaint):
    path = tmp_path / "bad.json"
    path.write_text(content)
    before = footprint()
    with pytest.raises(ImportFormatError, match=complaint):
        store.import_session(path)
    assert footprint() == before


def test_a_corrupt_session_never_hides_the_others(file_store):
    good = [file_store.create_session(title=f"good {n}") for n in range(3)]
    bad = file_store.create_session(title="bad")
    bad_path = os.path.join(file_store.base_dir, f"{bad}.json")
    with open(bad_path, "w") as handle:
        handle.write('{"_default": {"1": {"id": "trunc')
    broken_bytes = pathlib.Path(bad_path).read_bytes()
    # Remove the index so the store must read every session file to rebuild it.
    for name in os.listdir(os.path.join(file_store.base_dir, ".index")):
        os.unlink(os.path.join(file_store.base_dir, ".index", name))
    with pytest.warns(RuntimeWarning, match=re.escape(bad_path)):
        listed = file_store.list_sessions()
    assert sorted(s["id"] for s in listed) == sorted(good)
    assert [p.path for p in file_store.problems] == [bad_path]
    with pytest.raises(CorruptSession, match=re.escape(bad_path)):
        file_store.load_session(bad)
    with pytest.raises(CorruptSession):
        file_store.save_message(bad, "must not overwrite")
    assert pathlib.Path(bad_path).read_bytes() == broken_bytes


def test_listing_reads_only_the_listed_sessions(file_store):
    """A corrupt session outside the top N is not even opened by list_sessions(limit=N)."""
    old = file_store.create_session(title="old")
    newer = [file_store.create_session(title=f"new {n}") for n in range(3)]
    file_store.list_sessions()  # headers exist for all
    with open(os.path.join(file_store.base_dir, f"{old}.json"), "w") as handle:
        handle.write("garbage")
    os.utime(os.path.join(file_store.base_dir, f"{old}.json"), ns=(1, 1))
    listed = file_store.list_sessions(limit=3)
    assert [s["id"] for s in listed] == newer[::-1]
    assert file_store.problems == []


def test_sessions_changed_within_one_millisecond_list_in_the_order_they_were_changed(store):
    ids = [store.create_session(title=f"quick {n}") for n in range(40)]
    assert [s["id"] for s in store.list_sessions(limit=None)] == ids[::-1]
    for session_id in ids[:10]:
        store.save_message(session_id, "again")
    listed = store.list_sessions(limit=None)
    assert [s["id"] for s in listed[:10]] == ids[:10][::-1]
    assert len({s["updated_at"] for s in listed}) == len(ids)


def test_index_is_rebuilt_when_missing_or_stale(file_store):
    ids = [file_store.create_session(title=f"s{n}") for n in range(3)]
    file_store.save_message(ids[0], "latest")
    index = os.path.join(file_store.base_dir, ".index")
    for name in os.listdir(index):
        os.unlink(os.path.join(index, name))
    assert [s["id"] for s in file_store.list_sessions()] == [ids[0], ids[2], ids[1]]
    assert len(os.listdir(index)) == 3
    # A header left behind by a writer killed between its two writes is noticed.
    path = os.path.join(file_store.base_dir, f"{ids[1]}.json")
    with TinyDB(path) as db:
        db.update({"title": "edited behind our back"}, doc_ids=[1])
    assert {s["title"] for s in file_store.list_sessions()} >= {"edited behind our back"}


def _append_many(spec: tuple[str, str], session_ids: list[str], count: int, tag: str) -> None:
    manager = open_store(spec)
    for number in range(count):
        manager.save_message(session_ids[number % len(session_ids)], f"{tag}-{number}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shared", [True, False], ids=["one-session", "own-sessions"])
def test_four_processes_appending_lose_nothing(store, across_processes, shared):
    workers = 4
    ids = [store.create_session(title=f"w{n}") for n in range(1 if shared else workers)]
    context = get_context("spawn")
    processes = [
        context.Process(target=_append_many, args=(across_processes, ids if shared else [ids[n]], 250, f"p{n}"))
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(150)
        assert process.exitcode == 0
    contents = []
    for session_id in ids:
        messages = store.load_session(session_id)["messages"]
        assert [m["id"] for m in messages] == [f"msg_{n}" for n in range(1, len(messages) + 1)]
        contents += [m["content"] for m in messages]
    assert sorted(contents) == sorted(f"p{p}-{n}" for p in range(workers) for n in range(250))


@pytest.mark.timeout(120)
def test_threads_of_one_process_appending_lose_nothing(store, store_spec):
    """Threads share the store's lock objects (or connection pool): each must still exclude the others."""
    session_id = store.create_session(title="threads")
    other = open_store(store_spec)  # a second manager in the same process, as a chat panel has
    threads = [
        threading.Thread(target=lambda n=n: [(store if n % 2 else other).save_message(session_id, f"t{n}-{k}") for k in range(60)])
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(100)
    messages = store.load_session(session_id)["messages"]
    assert sorted(m["content"] for m in messages) == sorted(f"t{n}-{k}" for n in range(4) for k in range(60))
    assert len({m["id"] for m in messages}) == 240


WRITER = textwrap.dedent(
    """
    import sys
    from oblix_jupyter.sessions import SessionManager
    from oblix_jupyter.store.postgres import PostgresStore
    kind, where, session_id = sys.argv[1:]
    manager = SessionManager(where) if kind == "files" else PostgresStore(where)
    print("ready", flush=True)
    for number in range(200):
        manager.save_message(session_id, "x" * 2000 + str(number))
    """
)


@pytest.mark.timeout(180)
def test_kill_minus_nine_never_leaves_a_half_written_session(store, across_processes):
    session_id = store.create_session(title="victim")
    rng = random.Random(7)
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, *across_processes, session_id], stdout=subprocess.PIPE)
        assert writer.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if across_processes[0] == "files":
            with open(os.path.join(store.base_dir, f"{session_id}.json")) as handle:
                json.load(handle)
        session = store.load_session(session_id)
        assert [m["id"] for m in session["messages"]] == [f"msg_{n}" for n in range(1, len(session["messages"]) + 1)]
    assert [s["id"] for s in store.list_sessions()] == [session_id]
    store.save_message(session_id, "still writable after the kills")


def test_a_session_written_by_a_newer_version_is_refused_alike_by_every_store(store, footprint, tmp_path):
    from oblix_jupyter.store.migrations import SCHEMA_VERSION

    future = {"id": str(uuid.uuid4()), "created_at": "2030-01-01T00:00:00Z", "updated_at": "2030-01-01T00:00:00Z",
              "messages": [], "schema_version": SCHEMA_VERSION + 1}
    path = tmp_path / "future.json"
    path.write_text(json.dumps(future))
    before = footprint()
    for new_id in (True, False):
        with pytest.raises(NewerSchema, match=f"session schema {SCHEMA_VERSION + 1}; this one reads up to {SCHEMA_VERSION}: upgrade"):
            store.import_session(path, new_id=new_id)
    assert footprint() == before


def test_a_store_that_leaves_out_an_operation_of_the_contract_cannot_be_made():
    """The contract is enforced when a store is made, not when the client first calls the missing method (and gets None)."""
    assert {"load_session", "save_message", "bind", "_store_new", "_prune", "location"} <= SessionStore.__abstractmethods__
    for left_out in sorted(SessionStore.__abstractmethods__):
        written = {name: getattr(MemoryStore, name) for name in SessionStore.__abstractmethods__ if name != left_out}
        forgetful = type("Forgetful", (SessionStore,), {**written, "__init__": MemoryStore.__init__})
        with pytest.raises(TypeError, match=left_out):
            forgetful("forgetful")
    assert MemoryStore("complete").list_sessions() == []


def test_notebook_bindings(store):
    first, second = store.create_session(), store.create_session()
    store.bind("/work/a.ipynb", first)
    store.bind("b.ipynb", second)
    store.bind("/work/a.ipynb", second)  # rebinding replaces
    assert store.bindings() == {"/work/a.ipynb": second, "b.ipynb": second}
    assert store.bound_session("missing.ipynb") is None
    store.delete_session(second)
    assert store.bound_session("b.ipynb") is None
    store.unbind("b.ipynb")
    assert "b.ipynb" not in store.bindings()
    with pytest.raises(InvalidSessionId):
        store.bind("x.ipynb", "../etc")


def test_an_unreadable_bindings_file_loses_bindings_never_sessions(file_store):
    first = file_store.create_session()
    file_store.bind("a.ipynb", first)
    with open(os.path.join(file_store.base_dir, ".bindings.json"), "w") as handle:
        handle.write("{broken")
    with pytest.warns(RuntimeWarning):
        assert file_store.bindings() == {}
    assert file_store.load_session(first) is not None
    with pytest.warns(RuntimeWarning):
        file_store.bind("c.ipynb", first)
    assert file_store.bindings() == {"c.ipynb": first}
    assert any(name.startswith(".bindings.json.corrupt-") for name in os.listdir(file_store.base_dir))


def test_an_older_session_file_is_upgraded_on_read_and_a_newer_one_is_refused_without_hiding_the_rest(tmp_path):
    from oblix_jupyter.store.migrations import SCHEMA_VERSION

    store = SessionManager(tmp_path)
    old_id = "0c8c1f3e-5a7b-4c2d-9e8f-1a2b3c4d5e6f"
    old = {"id": old_id, "created_at": "2024-01-01T10:00:00", "updated_at": "2024-01-01T10:05:00",
           "messages": [{"id": "msg_1", "role": "user", "content": "hi", "timestamp": "2024-01-01T10:00:00"}]}  # the SDK's file, no version
    (tmp_path / f"{old_id}.json").write_text(json.dumps({"_default": {"1": old}}))
    new_id = "1d9d2f4e-6b8c-4d3e-8f90-2b3c4d5e6f70"
    newer = {**old, "id": new_id, "title": "from the future", "schema_version": SCHEMA_VERSION + 1}
    (tmp_path / f"{new_id}.json").write_text(json.dumps({"_default": {"1": newer}}))
    fine = store.create_session(title="fine")

    session = store.get_session(old_id)
    assert session["schema_version"] == SCHEMA_VERSION and session["messages"] == old["messages"]
    assert session["title"] and session["context"] == {} and session["metadata"] == {}
    assert json.loads((tmp_path / f"{old_id}.json").read_text())["_default"]["1"].get("schema_version") is None  # read only
    store.save_message(old_id, "and now?")
    assert json.loads((tmp_path / f"{old_id}.json").read_text())["_default"]["1"]["schema_version"] == SCHEMA_VERSION

    with pytest.warns(RuntimeWarning, match="newer oblix_jupyter"):
        listed = {s["id"] for s in store.list_sessions()}
    assert listed == {old_id, fine} and any("upgrade oblix_jupyter" in str(p) for p in store.problems)
    with pytest.raises(NewerSchema, match="session schema"):
        store.get_session(new_id)
    assert store.get_session(fine)["schema_version"] == SCHEMA_VERSION


# -- attachments in exports, imports and copies ------------------------------------------

FIGURE = b"\x89PNG\r\n\x1a\n the bytes of a figure"
PHOTO = b"\xff\xd8\xff the bytes of a photo"


def session_with_images(store) -> tuple[str, list[str]]:
    """A session whose prompt carries two images, saved as a turn saves them: the bytes first, then the message naming them."""
    session_id = store.create_session(title="figures")
    ids = [store.save_attachment(session_id, data) for data in (FIGURE, PHOTO)]
    entries = [
        {"id": ids[0], "mime": "image/png", "width": 640, "height": 480, "label": "figure from cell 5", "bytes": len(FIGURE)},
        {"id": ids[1], "mime": "image/jpeg", "width": 20, "height": 10, "label": "figure `photo`", "bytes": len(PHOTO)},
    ]
    store.save_message(session_id, "why does this curve bend?", attachments=entries)
    store.save_message(session_id, "It saturates.", role="assistant", model="m")
    return session_id, ids


@pytest.mark.parametrize("extension", [".json", ".ipynb"])
def test_export_and_import_keep_the_images_bytes(store, tmp_path, extension):
    from oblix_jupyter.store.formats import export_session, import_session

    session_id, ids = session_with_images(store)
    path = export_session(store, session_id, tmp_path / "exports" / f"chat{extension}")
    copy_id = import_session(store, path)
    original, imported = store.get_session(session_id), store.get_session(copy_id)
    assert imported["messages"] == original["messages"]  # the entries as they were: no "data" kept in the document
    assert [store.read_attachment(copy_id, attachment) for attachment in ids] == [FIGURE, PHOTO]
    assert store.delete_session(session_id)
    assert [store.read_attachment(copy_id, attachment) for attachment in ids] == [FIGURE, PHOTO]  # the import's own


def test_a_copy_keeps_the_images_and_deleting_it_leaves_the_originals(store, footprint):
    session_id, ids = session_with_images(store)
    copy_id = store.copy_session(session_id)
    assert store.get_session(copy_id)["messages"] == store.get_session(session_id)["messages"]
    assert [store.read_attachment(copy_id, attachment) for attachment in ids] == [FIGURE, PHOTO]
    assert store.delete_session(copy_id)
    with pytest.raises(AttachmentNotFound):
        store.read_attachment(copy_id, ids[0])
    assert [store.read_attachment(session_id, attachment) for attachment in ids] == [FIGURE, PHOTO]


def forged(exported: dict, change) -> dict:
    """The exported session with ``change`` applied to its first attachment entry."""
    session = json.loads(json.dumps(exported))
    change(session["messages"][0]["attachments"][0])
    return session


@pytest.mark.parametrize(
    "change, complaint",
    [
        (lambda entry: entry.update(data=base64.b64encode(b"other bytes").decode()), "does not match its data"),
        (lambda entry: entry.update(id=hashlib.sha256(PHOTO).hexdigest()), "does not match its data"),  # another image's id
        (lambda entry: entry.update(id="../" * 8 + "etc/passwd"), "does not match its data"),
        (lambda entry: entry.update(data="@@@ not base64 @@@"), "not valid base64"),
        (lambda entry: entry.update(data=entry["data"][:-2]), "not valid base64"),  # cut short
        (lambda entry: entry.update(data=7), "not 1 to"),
        (lambda entry: entry.pop("data"), "holds no data for attachment"),
        (lambda entry: entry.update(mime="image/svg+xml"), "only image/png and image/jpeg"),
        (lambda entry: entry.update(mime="text/html"), "only image/png and image/jpeg"),
        (lambda entry: entry.update(label=["not", "text"]), "not of its type"),
        (lambda entry: entry.update(width=-1), "not of its type"),
        (lambda entry: entry.update(data=base64.b64encode(bytes(20 * 1024 * 1024 + 1)).decode(),
                                    id=hashlib.sha256(bytes(20 * 1024 * 1024 + 1)).hexdigest()), "not 1 to 20,971,520 bytes"),
    ],
    ids=["other-bytes", "other-id", "path-id", "garbage", "cut-short", "not-text", "no-data", "svg", "html", "label", "width", "oversized"],
)
def test_an_imported_file_with_forged_or_bad_attachments_is_refused_and_creates_nothing(store, footprint, tmp_path, change, complaint):
    session_id, _ = session_with_images(store)
    store.export_session(session_id, tmp_path / "good.json")
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged(json.loads((tmp_path / "good.json").read_text()), change)))
    before = footprint()
    for new_id in (True, False):
        with pytest.raises(ImportFormatError, match=rf"message 1 \(msg_1\).*{complaint}"):
            store.import_session(path, new_id=new_id)
    assert footprint() == before


def test_an_import_whose_images_cannot_be_saved_leaves_no_half_session(file_store, tmp_path):
    """A real failure after the session was stored: the folder the bytes go in is a file, so no attachment can be written."""
    session_id, _ = session_with_images(file_store)
    file_store.export_session(session_id, tmp_path / "chat.json")
    shutil.rmtree(os.path.join(file_store.base_dir, ".attachments"))
    pathlib.Path(file_store.base_dir, ".attachments").write_text("in the way")
    listed = [row["id"] for row in file_store.list_sessions()]
    before = tree(file_store.base_dir)
    with pytest.raises(OSError):
        file_store.import_session(tmp_path / "chat.json")
    assert tree(file_store.base_dir) == before and [row["id"] for row in file_store.list_sessions()] == listed


IMPORT_AND_EXIT = "import sys\nfrom oblix_jupyter.store.factory import open_store\nopen_store(sys.argv[1]).import_session(sys.argv[2])"


def test_an_import_killed_at_any_moment_leaves_no_message_naming_bytes_that_are_not_there(across_processes, tmp_path):
    """A process importing a session with many images is killed at moments spread over its work: whatever it left,
    every stored message's images read back (the bytes are stored with the session, all or nothing)."""
    from PIL import Image

    where = across_processes[1]
    source = open_store(across_processes)
    origin = source.create_session(title="figures")
    noise = random.Random(7)
    for number in range(24):  # distinct, incompressible PNGs: an import with much to write
        picture = Image.frombytes("RGB", (240, 240), bytes(noise.getrandbits(8) for _ in range(240 * 240 * 3)))
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        entry = {"mime": "image/png", "width": 240, "height": 240, "label": f"figure {number}", "bytes": len(buffer.getvalue())}
        source.save_message(origin, f"figure {number}", role="user", attachments=[{**entry, "id": source.save_attachment(origin, buffer.getvalue())}])
    exported = tmp_path / "figures.json"
    source.export_session(origin, exported)
    source.delete_session(origin)
    if isinstance(source, PostgresStore):
        source.close()

    started = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORT_AND_EXIT, where, str(exported)], check=True, timeout=120)
    whole = time.monotonic() - started
    for step in range(1, 8):
        child = subprocess.Popen([sys.executable, "-c", IMPORT_AND_EXIT, where, str(exported)])
        time.sleep(whole * step / 8)
        child.kill()
        child.wait()

    store = open_store(across_processes)
    try:
        sessions = store.list_sessions(100)
        assert sessions, "the import that was not killed is there"
        for summary in sessions:
            session = store.get_session(summary["id"])
            for message in session["messages"]:
                for entry in message.get("attachments") or []:
                    assert hashlib.sha256(store.read_attachment(session["id"], entry["id"])).hexdigest() == entry["id"]
    finally:
        if isinstance(store, PostgresStore):
            store.close()


KEY = "sk-proj-" + "Q7xW2mZk9RtY4vBn8LpE3sHd"  # the shape of an OpenAI key
PASSWORD = "hunter2-of-the-team-db"  # no known shape: a secret only by the name it sits under


def test_a_key_written_through_the_sdk_reaches_neither_the_store_nor_a_model(store, footprint, model_env):
    """A script of the user's (or a colleague's, on a shared session) writes keys through every SDK call, at every depth.

    None of it went through a turn, yet the next turn sends the context and the history
    to a model, and the store is read by whoever the session is shared with: every call
    that writes redacts, in each store, and what the call returns is what was kept.
    """
    context = {"setup": {"steps": [f"export OPENAI_API_KEY={KEY}"]}, "db": {"host": "db.internal", "password": PASSWORD}}
    session_id = store.create_session(initial_context=context, title=f"notes {KEY}", metadata={"owner": "ana", "auth": {"token": PASSWORD}})
    asked = store.save_message(session_id, f"my key is {KEY}, why does the call fail?")
    looked = {"name": "notebook_cell", "summary": f"read {KEY}", "arguments": {"auth": {"api_key": PASSWORD}}}
    figure = {"label": f"figure {KEY}", "withheld": f"not kept: {KEY}"}
    answered = store.save_message(
        session_id, {"content": f"Connect with postgresql://ana:{PASSWORD}@db.internal/x"}, role="assistant", tools=[looked], attachments=[figure]
    )
    updated = store.update_session(session_id, title=f"renamed {KEY}", context={**context, "note": f"Authorization: Bearer {PASSWORD}"})
    store.update_session_metadata(session_id, {"dsn": f"postgresql://ana:{PASSWORD}@db.internal/x"})
    returned = json.dumps([asked, answered, updated])
    assert "why does the call fail" in returned and "db.internal" in returned and KEY not in returned and PASSWORD not in returned

    client = OblixClient(session_manager=store, semantic=False)
    client.execute_sync("What was the problem again?", session_id)
    client.wait_for_background()

    sent = json.dumps(model_env.chat_requests())
    assert "why does the call fail" in sent and "db.internal" in sent and "[withheld: secret-looking]" in sent
    kept = repr(footprint())  # every file's bytes, every row of every table, or the memory store's dicts
    assert "What was the problem again?" in kept and "why does the call fail" in kept
    for secret in (KEY, KEY[len("sk-proj-") :], PASSWORD):
        assert secret not in sent and secret not in kept
