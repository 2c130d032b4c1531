"""The command line and the magics on a team's PostgreSQL store: search, sharing between two users, administration.

Each user reaches the database as a hub's spawner would set it up, through
``OBLIX_STORE`` (or ``Oblix.store``); the server is the real one of the ``postgres``
fixture, and the kernels are real ones.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest
from kernels import outputs_text, run_cells
from postgres_server import ADMIN, DATABASE, PostgresServer
from psycopg import sql
from test_cli import fails_with, oblix
from waiting import running_in, wait_until

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import BadArguments, NotPermitted
from oblix_jupyter.frontends.cli import main
from oblix_jupyter.sessions import SessionManager
from oblix_jupyter.store.pg_schema import LATEST

pytestmark = pytest.mark.timeout(120)
LOAD = "%load_ext oblix_jupyter"
SECRET = "pg-secret-never-shown"  # the server trusts the socket and ignores it; nothing may print it


def store_url(postgres: PostgresServer, role: str, database: str = DATABASE, password: str | None = None) -> str:
    """An ``OBLIX_STORE`` URL for ``role`` over the test server's socket."""
    login = f"{role}:{password}" if password else role
    return f"postgresql://{login}@/{database}?host={quote(postgres.socket_dir)}&port=5432"


def as_user(url: str) -> dict[str, str]:
    """The environment of a process whose store is ``url``."""
    return {**os.environ, "OBLIX_STORE": url}


@pytest.fixture
def team(postgres) -> Iterator[dict[str, tuple[str, OblixClient]]]:
    """alice and bob (fresh roles, so their sessions are theirs alone): name -> (role, a client on their store)."""
    suffix = uuid.uuid4().hex[:6]
    members = {}
    for name in ("alice", "bob"):
        role = postgres.create_user(f"{name}_{suffix}")
        members[name] = (role, OblixClient(store=store_url(postgres, role)))
    yield members
    for _, client in members.values():
        client.session_manager.close()


def merge_notes(client: OblixClient) -> str:
    """A session about merging frames, and one about something else; the first's id."""
    session_id = client.create_session_sync(title="Pandas merge notes")
    client.session_manager.save_message(session_id, "How do I merge two frames with pandas on a customer key?")
    client.session_manager.save_message(session_id, "Use df.merge(other, on='customer_id').", role="assistant")
    other = client.create_session_sync(title="Plotting")
    client.session_manager.save_message(other, "Which colour map suits a heat map?")
    return session_id


def test_search_share_and_unshare_between_two_users(postgres, team):
    (alice, _), (bob, bobs) = team["alice"], team["bob"]
    alice_env, bob_env = as_user(store_url(postgres, alice)), as_user(store_url(postgres, bob))
    notes = merge_notes(bobs)

    found = oblix("search", "pandas", "merge", env=bob_env)
    assert found.returncode == 0, found.stderr
    first, snippet = found.stdout.splitlines()
    assert first == f"1. Pandas merge notes ({notes[:8]})"
    assert snippet == "   «Pandas» «merge» notes"  # the title matched best
    quoted = oblix("search", "customer key", env=bob_env).stdout.splitlines()[1]
    assert quoted.startswith("   ") and quoted.endswith("on a «customer» «key»")  # the message's words, shortened
    assert oblix("search", "kubernetes", env=bob_env).stdout == "No session matches 'kubernetes'.\n"

    assert oblix("share", notes[:8], alice, env=bob_env).stdout == f"Shared {notes[:8]} with {alice} (read only).\n"
    assert oblix("shares", notes[:8], env=bob_env).stdout.splitlines()[1].split() == [alice, "read", "only"]
    listing = oblix("sessions", env=alice_env).stdout.splitlines()
    assert listing[0].split()[-1] == "ACCESS" and len(listing) == 2
    assert notes[:8] in listing[1] and listing[1].endswith(f"shared by {bob}")
    assert f"({notes[:8]}) · shared by {bob}" in oblix("search", "customer", env=alice_env).stdout
    fails_with(oblix("rename", notes[:8], "Mine", env=alice_env), f"belongs to {bob}", "cannot change it")
    fails_with(oblix("share", notes[:8], bob, env=alice_env), f"belongs to {bob}", "cannot share it")
    assert bobs.get_session(notes)["title"] == "Pandas merge notes"

    assert oblix("unshare", notes[:8], alice, env=bob_env).returncode == 0
    assert bobs.shares(notes) == []
    assert "No sessions yet" in oblix("sessions", env=alice_env).stdout
    fails_with(oblix("show", notes, env=alice_env), f"No session '{notes}'")


def test_the_client_shares_for_writing_and_refuses_what_the_database_cannot(team):
    (alice, alices), (bob, bobs) = team["alice"], team["bob"]
    notes = merge_notes(bobs)
    bobs.share(notes, alice, write=True)
    assert bobs.shares(notes) == [{"user": alice, "write": True}]
    alices.session_manager.save_message(notes, "I added the left join too.")
    with pytest.raises(NotPermitted, match=f"belongs to {bob}; you cannot change it"):  # a write share adds messages, no more
        alices.rename_session(notes, "Merge notes, tidied by alice")
    assert bobs.get_session(notes)["title"] == "Pandas merge notes"
    assert bobs.get_session(notes)["messages"][-1]["content"] == "I added the left join too."
    with pytest.raises(BadArguments, match="no database user 'nobody_here'"):
        bobs.share(notes, "nobody_here")
    bobs.share(notes, alice)  # again, without write: read only from now on
    with pytest.raises(NotPermitted, match="cannot change it"):
        alices.rename_session(notes, "Mine now")


def test_db_upgrade_status_and_add_user(postgres):
    fresh = f"oblix_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn(ADMIN, database="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(fresh)))
    try:
        admin = store_url(postgres, ADMIN, fresh, password=SECRET)
        shown = f"postgresql: user={ADMIN} dbname={fresh} host={postgres.socket_dir} port=5432"
        before = oblix("db", "--dsn", admin, "status")
        assert before.stdout == f"{shown}: schema version 0, this oblix_jupyter needs {LATEST}: run `oblix db upgrade`.\n"
        assert oblix("db", "--dsn", admin, "upgrade").stdout == f"{shown}: applied {LATEST} migration(s); schema version {LATEST}.\n"
        again = oblix("db", "upgrade", env=as_user(admin))  # OBLIX_STORE names the database when --dsn does not
        assert again.stdout == f"{shown}: already up to date; schema version {LATEST}.\n"
        assert oblix("db", "--dsn", admin, "status").stdout == f"{shown}: schema version {LATEST}, up to date.\n"
        assert SECRET not in before.stdout + before.stderr + again.stdout + again.stderr
    finally:
        with psycopg.connect(postgres.dsn(ADMIN, database="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(fresh)))

    carol = f"carol_{uuid.uuid4().hex[:6]}"
    added = oblix("db", "add-user", carol, env=as_user(store_url(postgres, ADMIN, password=SECRET)))
    assert added.returncode == 0 and added.stdout.startswith(f"{carol} is a user of the session database")
    member = "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s"
    assert postgres.admin_query(member, (carol,)) == [(1,)]
    assert oblix("sessions", env=as_user(store_url(postgres, carol))).returncode == 0, "carol can use the store at once"

    user = postgres.create_user()
    fails_with(oblix("db", "upgrade", env=as_user(store_url(postgres, user))), "must run as a PostgreSQL superuser")
    fails_with(oblix("db", "add-user", "mallory", env=as_user(store_url(postgres, user))), "refused this")
    fails_with(oblix("db", "status", env={**os.environ, "OBLIX_STORE": ""}), "--dsn", "OBLIX_STORE=postgresql://")
    unreachable = oblix("db", "--dsn", f"postgresql://{ADMIN}:{SECRET}@/{DATABASE}?host=/nowhere", "status")
    assert SECRET not in fails_with(unreachable, "cannot be used", "host=/nowhere")


def test_import_files_copies_each_session_once_keeping_ids_and_bindings(postgres, tmp_path):
    files = SessionManager()  # the user's own ~/.oblix/sessions (OBLIX_HOME is private to the test)
    kept = files.create_session(title="Cleaning sales data")
    figure = files.save_attachment(kept, b"\x89PNG the invoices plot")
    files.save_message(kept, "Drop the duplicated invoices first.", attachments=[{"id": figure, "mime": "image/png", "label": "figure from cell 3"}])
    files.save_message(kept, "df.drop_duplicates('invoice')", role="assistant", model="openai/gpt-4o-mini")
    files.update_session(kept, pinned=["msg_1"])
    other = files.create_session(title="Empty so far")
    files.bind("/home/me/sales.ipynb", kept)
    (tmp_path / "oblix-home" / "sessions" / f"{uuid.uuid4()}.json").write_text("{ not json")
    env = as_user(store_url(postgres, postgres.create_user()))

    first = oblix("db", "import-files", env=env)
    assert first.returncode == 0, first.stderr
    assert re.match(r"Copied 2 session\(s\) and 1 notebook binding\(s\) to postgresql: .*; 0 already there, 0 failed, 1 unreadable\.\n", first.stdout)
    assert "oblix: warning:" in first.stderr  # the unreadable file, named
    second = oblix("db", "import-files", str(files.base_dir), env=env)
    assert "Copied 0 session(s) and 0 notebook binding(s)" in second.stdout and "2 already there" in second.stdout

    database = OblixClient(store=env["OBLIX_STORE"])
    try:
        copied = database.get_session(kept)
        assert [(m["id"], m["content"]) for m in copied["messages"]] == [(m["id"], m["content"]) for m in files.get_session(kept)["messages"]]
        assert copied["pinned"] == ["msg_1"] and copied["messages"][1]["model"] == "openai/gpt-4o-mini"
        assert database.read_attachment(kept, figure) == b"\x89PNG the invoices plot", "a question's images come along"
        assert database.bound_session("/home/me/sales.ipynb") == kept
        assert {s["id"] for s in database.list_sessions()} == {kept, other}
    finally:
        database.session_manager.close()


def test_doctor_names_the_database_without_its_password_and_says_whether_it_answers(postgres, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    monkeypatch.setenv("OBLIX_STORE", store_url(postgres, postgres.create_user(), password=SECRET))
    assert main(["doctor"]) == 0
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert rows["store"].startswith("postgresql: user=") and f"dbname={DATABASE}" in rows["store"]
    assert rows["store state"] == f"answers (PostgreSQL, schema version {LATEST}, up to date)" and rows["sessions"] == "0"

    monkeypatch.setenv("OBLIX_STORE", f"postgresql://nobody:{SECRET}@/{DATABASE}?host=/nowhere")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert rows["store"] == f"postgresql: user=nobody dbname={DATABASE} host=/nowhere"
    assert rows["store state"].startswith("not answering: The session database") and SECRET not in out

    # What this machine keeps for the database is read from the spool's files, with the database away.
    from oblix_jupyter.store.spool import Spool

    Spool(f"user=nobody dbname={DATABASE} host=/nowhere", "nobody").add("some-session", {"role": "user", "content": "kept"})
    assert main(["doctor"]) == 0
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert rows["saved locally"] == f"1 message(s) waiting for user=nobody dbname={DATABASE} host=/nowhere as nobody"


def test_two_users_in_real_kernels_share_and_a_notebook_keeps_its_session_in_the_database(model_env, postgres, team, tmp_path):
    (alice, _), (bob, bobs) = team["alice"], team["bob"]
    notes = merge_notes(bobs)
    bobs.share(notes, alice)
    notebook = str(tmp_path / "alice" / "analysis.ipynb")
    first = run_cells(
        [
            LOAD,
            "%%oblix\nhow do I join two frames?",
            "%oblix sessions",
            "%oblix sessions --search merge",
            f"%%oblix --session {notes[:8]}\nmay I add to your notes?",
            "from oblix_jupyter import current\nmine = current().id",
            f"%oblix share {{mine}} {bob} --write",
        ],
        notebook,
        env={"OBLIX_STORE": store_url(postgres, alice)},
    )
    texts = [outputs_text(cell) for cell in first.nb.cells]
    assert f"shared by {bob}" in texts[2] and "Pandas merge notes" in texts[2] and "◀ this notebook" in texts[2]
    assert "«merge»" in texts[3] and "Plotting" not in texts[3]
    assert "was shared with you to read: you cannot add to it" in texts[4] and "Traceback" not in texts[4]
    assert not any("may I add to your notes?" in json.dumps(request) for request in model_env.chat_requests()), \
        "a reader's turn is refused before any model is called"
    assert len(bobs.get_session(notes)["messages"]) == 2, "a reader's turn leaves the owner's session as it was"
    assert f"{bob} can now read and add to session" in texts[6]
    mine = next(s for s in bobs.list_sessions() if s["shared_by"] == alice)

    bobs.unshare(notes, alice)
    second = run_cells(  # a restart; the store now comes from the trait, which wins over OBLIX_STORE
        [
            LOAD,
            f"%config Oblix.store = {store_url(postgres, alice)!r}",
            "%%oblix\nand after a restart?",
            "%oblix sessions",
            "from oblix_jupyter import current\nmine = current().id",
            f"%oblix unshare {{mine}} {bob}",
        ],
        notebook,
        env={"OBLIX_STORE": str(tmp_path / "not-this-store")},
    )
    texts = [outputs_text(cell) for cell in second.nb.cells]
    asked = [m["content"] for m in model_env.chat_requests()[-1]["messages"] if m["role"] == "user"]
    assert asked == ["how do I join two frames?", "and after a restart?"], "the binding was kept in the database"
    assert "Pandas merge notes" not in texts[3] and mine["id"][:8] in texts[3]
    assert f"{bob} can no longer open session {mine['id'][:8]}" in texts[5]
    assert all(s["shared_by"] != alice for s in bobs.list_sessions())
    assert not (tmp_path / "not-this-store").exists()


def test_a_panel_on_a_shared_session_shows_a_colleagues_message_within_a_second(team, postgres):
    from oblix_jupyter.frontends.panel import ChatPanel

    (alice, alice_client), (_, bob_client) = team["alice"], team["bob"]
    session_id = bob_client.create_session_sync(title="live notes")
    bob_client.share(session_id, alice)
    panel = ChatPanel(alice_client, session_id=session_id)
    try:
        panel.poll_interval = 30  # so that only the database's announcement can bring the message in time
        panel._view_count = 1  # a front end shows the panel
        wait_until(lambda: running_in(psycopg.Connection.notifies, psycopg.Connection.wait, thread=panel.follower.thread),
                   10, "the panel to listen for the database's announcements")
        started = time.monotonic()
        bob_client.session_manager.save_message(session_id, "the join key is customer_id")
        wait_until(lambda: any("the join key is customer_id" in output["data"]["text/plain"]
                               for view in panel.messages.children for output in getattr(view, "outputs", ())), 5, "the message")
        assert time.monotonic() - started < 1.0
    finally:
        panel.close()


def test_the_panels_share_button_shares_and_shows_who_has_access(team, tmp_path):
    from oblix_jupyter.frontends.panel import ChatPanel

    (alice, alice_client), (bob, bob_client) = team["alice"], team["bob"]
    session_id = bob_client.create_session_sync(title="to share")
    panel = ChatPanel(bob_client, session_id=session_id)
    files_panel = ChatPanel(OblixClient(store=str(tmp_path / "files")))
    try:
        assert panel.access_note.value == "<small>Not shared.</small>"
        panel.share_user.value, panel.share_write.value = alice, True
        panel.share_button.click()
        assert bob_client.shares(session_id) == [{"user": alice, "write": True}]
        assert f"{alice} (reads and adds)" in panel.access_note.value and panel.share_user.value == ""
        assert any(s["id"] == session_id and s["shared_by"] == bob for s in alice_client.list_sessions())
        sharing = panel.share_button
        assert all(box.layout.display != "none" for box in _ancestors(panel, sharing))
        assert any(box.layout.display == "none" for box in _ancestors(files_panel, files_panel.share_button)), \
            "session files have nobody to share with: no Share button"
    finally:
        panel.close()
        files_panel.close()


def _ancestors(root, widget) -> list:
    """The boxes between ``root`` and ``widget``."""
    for child in getattr(root, "children", ()):
        if child is widget:
            return [root]
        found = _ancestors(child, widget)
        if found:
            return [root, *found]
    return []


def test_the_panels_picker_search_ranks_with_snippets_on_the_database(team):
    from oblix_jupyter.frontends.panel import ChatPanel

    _, alice_client = team["alice"]
    notes = merge_notes(alice_client)
    panel = ChatPanel(alice_client)
    try:
        panel.search_field.value = "merge frames"
        labels = {value: label for label, value in panel.session_picker.options}
        assert "«merge»" in labels[notes] and len(labels) == 2  # the new-session line, and the hit
    finally:
        panel.close()
