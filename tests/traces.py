"""Sessions with every trace the store keeps, made by a process of their own, and checks that a delete left none.

Deleting must work whichever process deletes, and whether or not that process ever
loaded the embedder; so the sessions, their vectors and their bindings are made here by
a separate Python process, as another kernel would have made them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing

import pytest

from oblix_jupyter.sessions import SessionManager

OLDER_MODEL = "an-older-embedding-model"  # vectors left by a model used before: a delete must find them too
NO_EMBEDDER = 3

CREATOR = textwrap.dedent(
    f"""
    import json, sys
    from oblix_jupyter.context.selector import conversation_messages
    from oblix_jupyter.context.embedder import digest, load_embedder, unavailable_reason
    from oblix_jupyter.context.vector_cache import VectorCache
    from oblix_jupyter import OblixClient
    from oblix_jupyter.kernel.binding import NotebookBinding
    from oblix_jupyter.sessions import SessionManager

    base_dir, notebook = sys.argv[1], sys.argv[2]
    embedder = load_embedder()
    if embedder is None:
        print(unavailable_reason(), file=sys.stderr)
        sys.exit({NO_EMBEDDER})
    store = SessionManager(base_dir)
    vectors = VectorCache(store, embedder)
    old = "2020-01-02T03:04:05.000Z"
    doomed = store.add_session({{
        "id": "-", "title": "doomed", "created_at": old, "updated_at": old, "context": {{}},
        "messages": [
            {{"role": "user", "content": "Where do the raw extracts live?"}},
            {{"role": "assistant", "content": "In the S3 bucket telco-raw-eu. It is refreshed every Monday."}},
        ],
    }})
    store.bind(notebook, doomed)
    store.bind(notebook + " (a second key for the same session)", doomed)
    binding = NotebookBinding(OblixClient(session_manager=store), {{}})
    binding.reported_path = notebook + ".kept.ipynb"
    kept = binding.session_id(create=True)
    store.save_message(kept, "How do I plot petal length?")
    store.save_message(kept, "Use df.petal_length.hist().", role="assistant", model="openai/x")
    for session_id in (doomed, kept):
        messages = conversation_messages(store.get_session(session_id))
        vectors.vectors(session_id, messages)
        older = {{digest(m["content"]): b"vectors of a model used before" for m in messages}}
        store.write_vectors("{OLDER_MODEL}", session_id, older)
        store.save_attachment(session_id, b"\\x89PNG a figure of " + session_id.encode())
    print(json.dumps({{"doomed": doomed, "kept": kept}}))
    """
)


def make_sessions(base_dir: str, notebook: str, umask: int = -1) -> tuple[str, str]:
    """Two sessions in the store at ``base_dir``, made by another process: (doomed, kept).

    Each has messages, a header, a lock file, vectors by the real embedder (and by an
    older model), an attachment, and bindings: the doomed one to ``notebook`` (and a second key), last
    updated in 2020; the kept one to another notebook, updated now.
    """
    result = subprocess.run(
        [sys.executable, "-c", CREATOR, base_dir, notebook], capture_output=True, text=True, timeout=120, umask=umask
    )
    if result.returncode == NO_EMBEDDER:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    return made["doomed"], made["kept"]


def traces(base_dir: str, session_id: str) -> list[str]:
    """Every file of the store whose name or folder holds the session's id, every binding to it and use of a vector by it.

    Vectors are kept by content, not by session, so every vector that no session uses
    any more (what a delete would have left behind) is counted as a trace as well.
    """
    found = [
        os.path.relpath(os.path.join(root, name), base_dir)
        for root, _, names in os.walk(base_dir)
        for name in names
        if session_id in name or session_id in os.path.relpath(root, base_dir)
    ]
    found += [f"binding {key}" for key, bound in SessionManager(base_dir).bindings().items() if bound == session_id]
    vectors = os.path.join(base_dir, ".vectors", "vectors.sqlite3")
    if os.path.exists(vectors):
        with closing(sqlite3.connect(vectors)) as db:
            uses = db.execute("SELECT model, key FROM uses WHERE session_id = ?", (session_id,))
            found += [f"vector use {model} {key}" for model, key in uses]
            unused = db.execute(
                "SELECT model, key FROM vectors WHERE NOT EXISTS "
                "(SELECT 1 FROM uses WHERE uses.model = vectors.model AND uses.key = vectors.key)"
            )
            found += [f"vector of no session {model} {key}" for model, key in unused]
    return sorted(found)


def assert_fully_traced(base_dir: str, session_id: str, notebook: str) -> list[str]:
    """Check that every kind of trace exists (so that a later 'all gone' proves something); returns them."""
    from oblix_jupyter.context.embedder import MODEL_ID

    found = traces(base_dir, session_id)
    for expected in (f"{session_id}.json", os.path.join(".locks", f"{session_id}.lock"), f"binding {notebook}"):
        assert expected in found, (expected, found)
    for prefix in (".index" + os.sep, os.path.join(".attachments", session_id) + os.sep, f"vector use {MODEL_ID} ", f"vector use {OLDER_MODEL} "):
        assert any(trace.startswith(prefix) for trace in found), (prefix, found)
    return found
