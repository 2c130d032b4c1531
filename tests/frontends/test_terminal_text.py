"""A terminal gets text, never control characters: every ``oblix`` command, run as a real process.

The attacker writes what the commands print: a session's title, model, context and
answers (a colleague's shared session, an imported file, a model quoting a web page),
a role name on the team database, a streamed answer. Each holds OSC 52 (write the
clipboard), a window title, CSI colours and erases, the one-byte C1 CSI, a DCS, BEL,
carriage return and backspace. Output is decoded as UTF-8 and checked by code point: a
C1 control reaches a UTF-8 terminal as U+0080-U+009F.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest
from model_server import Behavior
from postgres_server import DATABASE

from oblix_jupyter.sessions import SessionManager

pytestmark = pytest.mark.timeout(180)

# Clipboard write, window title, colour, C1 CSI erase, DCS ... ST, BEL, CR, BS, DEL.
HOSTILE = "\x1b]52;c;b3duZWQ=\x07\x1b]0;pwned\x1b\\\x1b[31mred\x1b[0m\x9b2J\x90dcs\x9c\x07\r\x08\x7f"
ROLE_CONTROLS = "\x1b]52;c;eA==\x07\x1b[31m\x9b2J\x07"  # a role name has at most 63 bytes
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def run(*arguments: str, env: dict[str, str] | None = None, stdin: str = "", cwd: str | None = None) -> tuple[int, str, str]:
    """``oblix`` in a process of its own; its exit status, stdout and stderr, decoded strictly as UTF-8."""
    result = subprocess.run(
        [sys.executable, "-m", "oblix_jupyter.frontends.cli", *arguments],
        input=stdin.encode("utf-8"),
        capture_output=True,
        env=env or dict(os.environ),
        cwd=cwd,
        timeout=120,
    )
    return result.returncode, result.stdout.decode("utf-8"), result.stderr.decode("utf-8")


def assert_no_controls(command: tuple[str, ...], out: str, err: str) -> None:
    for name, text in (("stdout", out), ("stderr", err)):
        found = sorted({f"U+{ord(c):04X}" for c in CONTROLS.findall(text)})
        assert not found, f"`oblix {' '.join(command)}` wrote {found} to {name}: {text!r}"


@pytest.fixture
def hostile_store(tmp_path):
    """A file store whose every printed field carries the controls, a notebook bound to it; the session's id."""
    store = SessionManager()
    session_id = store.create_session({"dataset": f"sales{HOSTILE}"}, title=f"Quarterly{HOSTILE} report")
    store.save_message(session_id, f"What is in{HOSTILE} the file?")
    store.save_message(session_id, f"An answer{HOSTILE} with colours", role="assistant", model=f"openai/gpt{HOSTILE}", status=f"cut{HOSTILE}")
    store.update_session(session_id, model=f"openai/gpt{HOSTILE}")
    store.bind(f"/work/note{HOSTILE}book.ipynb", session_id)
    return store, session_id


def test_every_command_that_prints_stored_text_prints_it_without_controls(hostile_store, tmp_path):
    store, session_id = hostile_store
    prefix = session_id[:8]
    commands = [
        ("sessions",),
        ("sessions", "--json"),
        ("sessions", "--search", "Quarterly"),
        ("search", "Quarterly"),
        ("show", prefix),
        ("show", prefix, "--json"),
        ("shares", prefix),
        ("export", prefix, str(tmp_path / f"out{HOSTILE}.md")),
        ("rename", prefix, f"Renamed{HOSTILE}"),
        ("show", f"no{HOSTILE}such"),  # an error quoting what was typed
        ("delete", prefix, "--yes"),
    ]
    shown = {}
    for command in commands:
        status, out, err = run(*command)
        assert_no_controls(command, out, err)
        shown[command] = (status, out, err)
    # The commands did print the hostile fields (a test that printed nothing would pass too).
    assert "# Quarterly]52;c;b3duZWQ=]0;pwned\\[31mred[0m2Jdcs" in shown[("show", prefix)][1]  # the visible rest stays
    assert "An answer" in shown[("show", prefix)][1] and "openai/gpt" in shown[("sessions",)][1]
    assert "Quarterly" in shown[("search", "Quarterly")][1] and "Quarterly" in shown[("sessions", "--search", "Quarterly")][1]
    assert shown[("show", f"no{HOSTILE}such")][0] == 1 and shown[("show", f"no{HOSTILE}such")][2].startswith("oblix: ")
    assert "Deleted 'Renamed" in shown[("delete", prefix, "--yes")][1]
    # --json keeps the data whole: the controls are escapes a JSON reader turns back into them.
    listed = json.loads(shown[("sessions", "--json")][1])
    assert listed["title"] == f"Quarterly{HOSTILE} report" and listed["notebooks"] == [f"/work/note{HOSTILE}book.ipynb"]
    assert json.loads(shown[("show", prefix, "--json")][1])["messages"][1]["content"] == f"An answer{HOSTILE} with colours"
    # The table is measured after cleaning: its columns still line up.
    header, row = shown[("sessions",)][1].splitlines()
    assert header.index("ID") == row.index(prefix)


def test_streamed_answers_and_the_terminal_chat_print_without_controls(model_env, hostile_store):
    store, session_id = hostile_store
    # Each sequence is cut across chunks, as a model streaming token by token would send it.
    pieces = ["Sure\x1b", "]52;c;b3duZWQ=", "\x07 here\x1b[", "31m is\x9b", "2J the\r", " answer\x1b]0;t\x07."]
    model_env.enqueue(Behavior(pieces=pieces), Behavior(pieces=pieces))
    asked = ("ask", "--session", session_id[:8], "hello")
    status, out, err = run(*asked)
    assert status == 0, err
    assert_no_controls(asked, out, err)
    assert out == "Sure]52;c;b3duZWQ= here[31m is2J the answer]0;t.\n"
    assert store.get_session(session_id)["messages"][-1]["content"] == "".join(pieces)  # stored as it came

    chat = ("chat", session_id[:8])
    status, out, err = run(*chat, stdin=f"/list\n/load {session_id[:8]}\n/new Fresh{HOSTILE}\nhi\nexit\n")
    assert status == 0, err
    assert_no_controls(chat, out, err)
    assert "Session Quarterly]52;c;" in out and "Loaded Quarterly" in out and "Sure]52;c;b3duZWQ= here" in out


def test_doctor_prints_a_hostile_store_path_and_model_without_controls(tmp_path):
    directory = tmp_path / f"store{HOSTILE}"
    SessionManager(str(directory)).create_session(title=f"t{HOSTILE}")
    env = {**os.environ, "OBLIX_STORE": str(directory), "OBLIX_MODEL": f"openai/m{HOSTILE}", "OBLIX_LOCAL_MODEL": "off"}
    status, out, err = run("doctor", env=env, cwd=str(tmp_path))
    assert status == 0, err
    assert_no_controls(("doctor",), out, err)
    assert "store]52;c;b3duZWQ=" in out and "openai/m]52;c;" in out


def test_role_names_on_the_team_database_print_without_controls(postgres):
    """A colleague's role name is his to choose: it shows in ``shares`` and in the owner column of ``sessions``."""
    socket = postgres.socket_dir
    owner = postgres.create_user(f"owner_{uuid.uuid4().hex[:6]}")
    hostile = postgres.create_user(f"mallory{ROLE_CONTROLS}_{uuid.uuid4().hex[:6]}")

    def store_of(role: str) -> dict[str, str]:  # libpq's key=value form, the role quoted
        return {**os.environ, "OBLIX_STORE": f"host={socket} port=5432 dbname={DATABASE} user='{role}'"}

    status, out, err = run("doctor", env={**store_of(owner), "OBLIX_LOCAL_MODEL": "off"})  # a key=value string names the database
    assert status == 0 and "postgresql: user=" in out, out + err
    from oblix_jupyter import OblixClient

    mine = OblixClient(store=store_of(owner)["OBLIX_STORE"])
    theirs = OblixClient(store=store_of(hostile)["OBLIX_STORE"])
    try:
        notes = mine.create_session_sync(title="notes")
        mine.share(notes, hostile)
        shared = theirs.create_session_sync(title=f"from mallory{HOSTILE}")
        theirs.share(shared, owner)
    finally:
        mine.session_manager.close()
        theirs.session_manager.close()
    for command in (("shares", notes[:8]), ("sessions",), ("search", "mallory"), ("show", shared[:8])):
        status, out, err = run(*command, env=store_of(owner))
        assert status == 0, err
        assert_no_controls(command, out, err)
        assert "mallory]52;c;" in out, (command, out)  # the role name, or the title that names him


def test_terminal_ipython_prints_answers_and_sessions_without_controls(model_env, hostile_store, tmp_path):
    """``%%oblix`` in terminal IPython writes the streamed answer, ``%oblix show`` and ``sessions`` as plain text."""
    store, session_id = hostile_store
    pieces = ["Sure\x1b", "]52;c;b3duZWQ=", "\x07 here\x1b[", "31m is\x9b", "2J the answer."]
    model_env.enqueue(Behavior(pieces=pieces))
    script = "; ".join(
        [
            "ip = get_ipython()",
            "ip.run_line_magic('load_ext', 'oblix_jupyter')",
            f"ip.run_line_magic('oblix', 'use {session_id[:8]}')",
            "ip.run_cell_magic('oblix', '', 'hello')",
            "ip.run_line_magic('oblix', 'show')",
            "ip.run_line_magic('oblix', 'sessions')",
            "ip.run_line_magic('oblix', 'context')",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", "-c", script],
        capture_output=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    out, err = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    assert result.returncode == 0, err
    assert_no_controls(("(terminal IPython)",), out, err)
    assert "Sure]52;c;b3duZWQ= here[31m is2J the answer." in out  # streamed, and shown again by show
    assert "Quarterly]52;c;" in out and "An answer]52;c;" in out and '"dataset": "sales' in out
