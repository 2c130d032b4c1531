"""Connection strings, attacked: every form is recognised as a database and no password ever shows.

The passwords hold what breaks naive handling: ``@``, ``%``, ``:``, ``/``, ``#``,
spaces, quotes, backslashes and non-ASCII letters, written raw, percent-encoded, in
``key=value`` form, in ``PGPASSWORD`` and in a service file. What a person sees is
checked end to end: ``oblix doctor``, the store's errors against an unreachable server
and against the real test server refusing a wrong password, and the spool's folders.
"""

from __future__ import annotations

import os
import re
import uuid
from urllib.parse import quote

import pytest
from postgres_server import DATABASE

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import StoreUnavailable
from oblix_jupyter.frontends.cli import main
from oblix_jupyter.store.dsn import describe, is_connection_string, problem, scrub
from oblix_jupyter.store.factory import open_store
from oblix_jupyter.store.postgres import PostgresStore

pytestmark = pytest.mark.timeout(120)

PASSWORDS = [
    "pa@ss:w/rd#1",
    "100%sure%41",
    "with space and 'quotes' and \"doubles\"",
    "back\\slash=equals;semi",
    "pässwörd-日本語-🔑",
    "%2F%40%25",
    "p",  # one character: still never shown
]


def quoted(value: str) -> str:
    """A value in libpq's key=value form."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def forms(password: str, host: str = "/nowhere", user: str = "nobody") -> list[str]:
    """One password written every way a connection string can hold it."""
    encoded = quote(password, safe="")
    return [
        f"postgresql://{user}:{encoded}@/{DATABASE}?host={quote(host, safe='')}",
        f"postgres://{user}:{encoded}@localhost:5432/{DATABASE}?host={quote(host, safe='')}",
        f"postgresql:///{DATABASE}?host={quote(host, safe='')}&user={user}&password={encoded}",
        f"host={host} dbname={DATABASE} user={user} password={quoted(password)}",
        f"  password={quoted(password)}   host={host} user={user} dbname={DATABASE}",
    ]


def shows(text: str, password: str) -> bool:
    """Whether ``text`` shows ``password`` in any of the ways a message could write it."""
    return any(form in text for form in {password, quote(password, safe=""), quote(password)} if form)


def test_every_form_is_a_connection_string_and_a_directory_is_not():
    for password in PASSWORDS:
        for dsn in forms(password):
            assert is_connection_string(dsn), dsn
    for dsn in ("service=team", "host=db.example dbname=team", "dbname = team", "POSTGRESQL://u@h/db"):
        assert is_connection_string(dsn), dsn
    for directory in ("/home/me/sessions", "sessions", "./host=x", "~/a=b", "C:\\Users\\me", "", None):
        assert not is_connection_string(directory), directory


def test_a_description_names_the_database_and_never_the_password():
    for password in PASSWORDS:
        for dsn in forms(password):
            shown = describe(dsn)
            assert shown.startswith("postgresql: ") and "user=nobody" in shown and f"dbname={DATABASE}" in shown, (dsn, shown)
            assert "password" not in shown and (len(password) < 2 or not shows(shown, password)), (dsn, shown)
    assert describe("host=h sslpassword=s3cret-key-pass sslkey=/k options='-c x=secret'") == "postgresql: host=h"


@pytest.mark.parametrize(
    "dsn, secret",
    [
        ("postgresql://nobody:p@ssw0rdX@/oblix?host=/nowhere", "ssw0rdX"),  # libpq would look up "ssw0rdX" as a host
        ("postgresql://nobody:pa55/w0rdX@localhost/oblix", "w0rdX"),  # libpq would take "pa55" for the port
        ("postgresql://nobody:p@55/w@rdX@localhost/oblix", "w@rdX"),
        ("postgresql://nobody:w1th sp4ce@/oblix", "sp4ce"),  # libpq quotes what it cannot read
        ("postgresql://nobody:bad%ZZpercent@/oblix", "bad%ZZpercent"),
        ("host=/nowhere password=tw0 w0rdz", "w0rdz"),
        ("host=/nowhere password='unterm1nated", "unterm1nated"),
    ],
)
def test_a_string_libpq_would_misread_is_refused_without_a_word_of_it(dsn, secret, monkeypatch, capsys):
    assert problem(dsn) is not None
    assert secret not in describe(dsn)
    assert secret not in scrub(f"error near {secret}", dsn)
    monkeypatch.setenv("OBLIX_STORE", dsn)
    with pytest.raises(StoreUnavailable) as refused:
        open_store()  # refused before libpq connects anywhere (a piece of a password is no host to look up)
    assert secret not in str(refused.value) and re.search("percent-encode|quote", str(refused.value))
    assert secret not in OblixClient.describe_store()
    assert main(["db", "--dsn", dsn, "status"]) == 1
    refused_line = capsys.readouterr().err
    assert refused_line.startswith("oblix: The session database cannot be used: ") and secret not in refused_line


def test_messages_lose_every_form_of_the_password(monkeypatch):
    for password in PASSWORDS[:-1]:
        for dsn in forms(password):
            message = f"could not connect with {dsn}: {password} / {quote(password, safe='')} rejected"
            assert not shows(scrub(message, dsn), password), (dsn, scrub(message, dsn))
    monkeypatch.setenv("PGPASSWORD", "short")  # no length makes a password safe to show
    assert scrub("the password short was refused", "host=/nowhere") == "the password *** was refused"


def test_a_key_value_string_opens_the_database_and_no_folder_of_that_name(postgres, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    role = postgres.create_user()
    dsn = f"host={postgres.socket_dir} port=5432 dbname={DATABASE} user={role} password={quoted(PASSWORDS[2])}"
    monkeypatch.setenv("OBLIX_STORE", dsn)
    store = open_store()
    try:
        assert isinstance(store, PostgresStore) and not shows(store.location, PASSWORDS[2])
        assert isinstance(OblixClient().session_manager, PostgresStore)
    finally:
        store.close()
    assert os.listdir(tmp_path) == [], "nothing was taken for a directory"


def doctor_rows(capsys) -> tuple[dict[str, str], str]:
    assert main(["doctor"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in captured.out.splitlines()), text


@pytest.fixture
def checked_login(postgres):
    """A role the test server authenticates by password (scram), unlike the other roles (trust): its name and password."""
    password = f"Right-{uuid.uuid4().hex[:8]}@%:/#'\" ü"
    role = postgres.create_user(f"scram_{uuid.uuid4().hex[:6]}", password=password)
    hba = os.path.join(postgres.data_dir, "pg_hba.conf")
    with open(hba, encoding="utf-8") as handle:
        rules = handle.read()
    with open(hba, "w", encoding="utf-8") as handle:
        handle.write(f"local all {role} scram-sha-256\n{rules}")  # first match wins: only this role
    postgres.admin_query("SELECT pg_reload_conf()")
    yield role, password
    with open(hba, "w", encoding="utf-8") as handle:
        handle.write(rules)
    postgres.admin_query("SELECT pg_reload_conf()")


def test_a_wrong_password_fails_in_one_line_that_shows_no_password(postgres, checked_login, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBLIX_LOCAL_MODEL", "off")
    role, right = checked_login
    for wrong in PASSWORDS[:-1]:
        for dsn in forms(wrong, host=postgres.socket_dir, user=role):
            monkeypatch.setenv("OBLIX_STORE", dsn)
            with pytest.raises(StoreUnavailable) as refused:
                open_store()
            assert "password authentication failed" in str(refused.value) and not shows(str(refused.value), wrong)
    rows, text = doctor_rows(capsys)
    assert rows["store state"].startswith("not answering: ") and "password authentication failed" in text
    assert not shows(text, PASSWORDS[-2])

    # The password in PGPASSWORD, the rest in a key=value string.
    monkeypatch.setenv("OBLIX_STORE", f"host={postgres.socket_dir} dbname={DATABASE} user={role}")
    monkeypatch.setenv("PGPASSWORD", "wr0ng")
    rows, text = doctor_rows(capsys)
    assert rows["store state"].startswith("not answering: ") and "wr0ng" not in text
    monkeypatch.setenv("PGPASSWORD", right)
    rows, text = doctor_rows(capsys)
    assert rows["store state"].startswith("answers (PostgreSQL") and not shows(text, right)


def test_a_service_file_names_the_database_and_its_password_never_shows(postgres, checked_login, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OBLIX_LOCAL_MODEL", "off")
    role, right = checked_login
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[team]\nhost={postgres.socket_dir}\nport=5432\ndbname={DATABASE}\nuser={role}\npassword={right}\n"
        f"[wrong]\nhost={postgres.socket_dir}\nport=5432\ndbname={DATABASE}\nuser={role}\npassword=Wrong-{right}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("OBLIX_STORE", "service=team")
    rows, text = doctor_rows(capsys)
    assert rows["store"] == "postgresql: service=team" and rows["store state"].startswith("answers (PostgreSQL")
    assert not shows(text, right)
    monkeypatch.setenv("OBLIX_STORE", "service=wrong")
    rows, text = doctor_rows(capsys)
    assert rows["store state"].startswith("not answering: ") and not shows(text, right)
    assert scrub(f"echoed Wrong-{right}", "service=wrong") == "echoed ***"
    monkeypatch.setenv("PGSERVICE", "team")  # the service named by the environment, the string saying nothing
    assert scrub(f"echoed {right}", "") == "echoed ***"


def test_the_spool_is_kept_per_database_and_per_user(postgres, monkeypatch):
    """Two users reaching one database through the same string (PGUSER tells them apart) never share a spool."""
    first, second = postgres.create_user(), postgres.create_user()
    shared = f"host={postgres.socket_dir} port=5432 dbname={DATABASE}"
    stores = []
    try:
        for role in (first, second, first):
            monkeypatch.setenv("PGUSER", role)
            stores.append(PostgresStore(shared))
        mine, theirs, mine_again = stores
        assert mine.spool.directory != theirs.spool.directory
        assert mine.spool.directory == mine_again.spool.directory  # the same user finds his messages again
        assert re.fullmatch(r"[0-9a-f]{16}", os.path.basename(mine.spool.directory)), "the folder's name says nothing of either"
        session_id = mine.create_session(title="mine")
        mine.spool.add(session_id, {"role": "user", "content": "kept for the first user", "timestamp": "2025-01-01T00:00:00Z"})
        assert theirs.flush_spool() == 0 and theirs.spool.pending() == []
        assert mine_again.flush_spool() == 1
        assert [m["content"] for m in mine.get_session(session_id)["messages"]] == ["kept for the first user"]
    finally:
        for store in stores:
            store.close()
