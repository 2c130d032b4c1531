"""The vector cache on real SQLite files: shared by content, gone with the last session that used it, never in the way."""

from __future__ import annotations

import os
import sqlite3
import stat
from contextlib import closing
from multiprocessing import get_context

import pytest

from oblix_jupyter.errors import InvalidSessionId
from oblix_jupyter.sessions import SessionManager
from oblix_jupyter.store.vector_file import FILE_NAME, VectorFile

MODEL = "a-model"
A = "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a"
B = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
SECRET = b"SECRET-VECTOR-PAYLOAD-" * 400  # larger than a page: it sits in overflow pages


@pytest.fixture
def directory(tmp_path):
    return str(tmp_path / "sessions" / ".vectors")


def rows(directory: str, table: str) -> list[tuple]:
    with closing(sqlite3.connect(os.path.join(directory, FILE_NAME))) as db:
        return sorted(db.execute(f"SELECT * FROM {table}"))


def test_payloads_come_back_for_the_keys_kept_and_only_those(directory):
    store = VectorFile(directory)
    assert store.get(MODEL, ["k1"]) == {}
    assert not os.path.exists(directory), "reading creates nothing"
    store.put(MODEL, A, {"k1": b"one", "k2": b"two"})
    assert store.get(MODEL, ["k1", "k2", "k3"]) == {"k1": b"one", "k2": b"two"}
    assert store.get("another-model", ["k1"]) == {}
    assert VectorFile(directory).get(MODEL, ["k2"]) == {"k2": b"two"}  # another process would read the same


def test_thousands_of_keys_are_read_in_batches(directory):
    store = VectorFile(directory)
    store.put(MODEL, A, {f"k{number}": number.to_bytes(4, "little") for number in range(5000)})
    found = store.get(MODEL, [f"k{number}" for number in range(0, 6000, 2)])
    assert len(found) == 2500 and found["k4998"] == (4998).to_bytes(4, "little")


def test_a_vector_is_kept_once_and_shared_until_no_session_uses_it(directory):
    store = VectorFile(directory)
    store.put(MODEL, A, {"shared": b"first", "own": b"of A"})
    store.put(MODEL, B, {"shared": None, "other": b"of B"})  # B holds the same message: its use alone is new
    store.put(MODEL, B, {"shared": b"a second payload is ignored"})
    assert store.get(MODEL, ["shared"]) == {"shared": b"first"}
    store.put("older-model", A, {"own": b"older"})

    store.forget_session(A)
    assert store.get(MODEL, ["shared", "own", "other"]) == {"shared": b"first", "other": b"of B"}
    assert store.get("older-model", ["own"]) == {}, "every model's vectors of the session"
    assert {row[0] for row in rows(directory, "uses")} == {B}

    store.forget_session(B)
    assert rows(directory, "vectors") == [] and rows(directory, "uses") == []
    store.forget_session(B)  # forgetting twice (an interrupted delete, redone) is harmless


def test_deleting_a_session_removes_its_vectors_of_every_model_and_keeps_those_still_shared(tmp_path):
    store = SessionManager(tmp_path)  # this process never loads an embedder
    doomed, kept = store.create_session(), store.create_session()
    store.write_vectors(MODEL, doomed, {"shared": b"same message", "own": b"its own"})
    store.write_vectors("older-model", doomed, {"own": b"by a model used before"})
    store.write_vectors(MODEL, kept, {"shared": None})
    assert store.delete_session(doomed)
    assert store.read_vectors(MODEL, ["shared", "own"]) == {"shared": b"same message"}
    assert store.read_vectors("older-model", ["own"]) == {}
    with pytest.raises(InvalidSessionId):
        store.write_vectors(MODEL, "../elsewhere", {"k": b"v"})


def test_forgotten_vectors_leave_no_bytes_on_disk(directory):
    store = VectorFile(directory)
    store.put(MODEL, A, {"big": SECRET, "small": b"SECRET-SMALL-PAYLOAD"})
    store.put(MODEL, B, {"kept": b"still here"})
    path = os.path.join(directory, FILE_NAME)
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "rb") as handle:
        assert SECRET[:40] in handle.read(), "the check below would prove nothing"
    store.put(MODEL, B, {"later": b"written after, so the journal holds pages again"})
    store.forget_session(A)  # no checkpoint of ours: the store's own must leave nothing behind
    for name in (FILE_NAME, FILE_NAME + "-wal"):
        if os.path.exists(os.path.join(directory, name)):
            with open(os.path.join(directory, name), "rb") as handle:
                raw = handle.read()
            assert b"SECRET-VECTOR" not in raw and b"SECRET-SMALL" not in raw, name
    assert store.get(MODEL, ["kept"]) == {"kept": b"still here"}


def test_the_file_is_private_whatever_the_umask(directory):
    old = os.umask(0o022)
    try:
        VectorFile(directory).put(MODEL, A, {"k": b"v"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.dirname(directory)).st_mode) == 0o700
    names = os.listdir(directory)
    assert FILE_NAME in names
    for name in names:  # the database and its journals
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600, name


def test_a_file_that_is_not_a_database_is_replaced_and_never_raises(directory):
    os.makedirs(directory)
    path = os.path.join(directory, FILE_NAME)
    with open(path, "wb") as handle:
        handle.write(b"this is no database, just garbage bytes " * 200)
    store = VectorFile(directory)
    assert store.get(MODEL, ["k"]) == {}
    store.put(MODEL, A, {"k": b"v"})
    assert store.get(MODEL, ["k"]) == {"k": b"v"}

    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the file, none in the journal
    with open(path, "r+b") as handle:  # damaged while in use, by something else
        handle.write(os.urandom(os.path.getsize(path)))
    other = VectorFile(directory)
    assert other.get(MODEL, ["k"]) == {}
    store.put(MODEL, A, {"k2": b"v2"})  # no error, whatever became of the write
    store.get(MODEL, ["k", "k2"])
    other.put(MODEL, B, {"k3": b"v3"})
    assert VectorFile(directory).get(MODEL, ["k3"]) == {"k3": b"v3"}
    store.forget_session(B)
    assert VectorFile(directory).get(MODEL, ["k3"]) == {}


def _put_many(directory: str, session_id: str, tag: str, count: int) -> None:
    store = VectorFile(directory)
    for number in range(count):
        store.put(MODEL, session_id, {f"{tag}-{number}": tag.encode() * 100, "shared": b"same content"})


@pytest.mark.timeout(120)
def test_two_processes_writing_at_once_lose_nothing(directory):
    context = get_context("spawn")
    processes = [context.Process(target=_put_many, args=(directory, session_id, tag, 200)) for session_id, tag in ((A, "a"), (B, "b"))]
    for process in processes:
        process.start()
    for process in processes:
        process.join(100)
        assert process.exitcode == 0
    keys = [f"{tag}-{number}" for tag in "ab" for number in range(200)]
    assert len(VectorFile(directory).get(MODEL, [*keys, "shared"])) == 401
    assert len(rows(directory, "uses")) == 402


def _write_legacy_vectors(directory: str) -> None:
    """What earlier versions kept: a file per session and embedding model."""
    for model, session_id in ((MODEL, A), ("older-model", B)):
        os.makedirs(os.path.join(directory, model), exist_ok=True)
        with open(os.path.join(directory, model, f"{session_id}.bin"), "wb") as handle:
            handle.write(b"legacy vectors")


def test_vectors_of_earlier_versions_are_removed_on_first_use(directory):
    _write_legacy_vectors(directory)
    VectorFile(directory).forget_session(A)  # even a store that never made its database
    assert os.listdir(directory) == []
    _write_legacy_vectors(directory)
    store = VectorFile(directory)
    store.put(MODEL, A, {"k": b"v"})
    assert all(name.startswith(FILE_NAME) for name in os.listdir(directory)), os.listdir(directory)
    assert store.get(MODEL, ["k"]) == {"k": b"v"}
