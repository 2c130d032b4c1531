"""Connection strings to the team's database: recognised, described for people, and kept out of messages.

One place decides what a store location is and what of it may be shown, so that
``oblix doctor``, ``OblixClient.describe_store``, the store's errors and the spool all
agree. A connection string is whatever libpq reads as one: a ``postgresql://`` (or
``postgres://``) URL, or ``key=value`` pairs (``host=db dbname=team``, ``service=team``);
anything else names a directory.

libpq itself parses (through psycopg, imported only here and only when a database is
named, as psycopg is an optional extra), so what is shown is what libpq will use. Two
things it does not do are done here:

- A URL whose password holds a raw ``@`` or ``/`` is split by libpq at the wrong place,
  so a piece of the password would become the host (looked up in DNS, quoted in errors)
  or the database name. Such a URL is refused, asking for percent-encoding.
- libpq quotes the part of a string it cannot read ("unexpected spaces found in
  "pass word""), so an unreadable string is reported without a word of it.
"""

from __future__ import annotations

import configparser
import os
import re
import urllib.parse

from ..errors import StoreUnavailable, redact

_URL = re.compile(r"^\s*postgres(?:ql)?://", re.IGNORECASE)
_KEY_VALUE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
# What of a connection string names the database; everything else (passwords, key files,
# ``options``) may hold something that is nobody's business.
SHOWN = ("user", "dbname", "host", "hostaddr", "port", "service")
# scheme://user:password@ in a message: up to the last "@" before a space or quote.
_URL_PASSWORD = re.compile(r"(://[^\s:/@'\"]*:)[^\s'\"]*@")
UNREADABLE = (
    "the connection string cannot be read (not shown, as it may hold the password): in a URL, percent-encode "
    "special characters (%40 for @, %2F for /, %20 for a space); in key=value form, quote values with spaces (password='a b')"
)
NO_DRIVER = "the PostgreSQL store needs psycopg: pip install 'oblix-jupyter[postgres]'"
AMBIGUOUS = (
    "the connection URL has an @ or / inside its user name, password or database name, which libpq would split "
    "at the wrong place: percent-encode them (%40 for @, %2F for /)"
)


def is_connection_string(location: str | os.PathLike[str] | None) -> bool:
    """Whether a store location names a database (a URL or ``key=value`` pairs) rather than a directory."""
    if location is None:
        return False
    text = os.fspath(location)
    return isinstance(text, str) and bool(_URL.match(text) or _KEY_VALUE.match(text))


def problem(dsn: str) -> str | None:
    """Why ``dsn`` cannot be used as it is (the message quotes none of it), or None."""
    if _URL.match(dsn) and _misplaced_at(dsn):
        return AMBIGUOUS
    try:
        _parse(dsn)
    except ImportError:
        return NO_DRIVER
    except ValueError:
        return UNREADABLE
    return None


def check(dsn: str) -> None:
    """Raise ``StoreUnavailable`` for a connection string libpq would misread or quote in its errors."""
    trouble = problem(dsn)
    if trouble:
        raise StoreUnavailable(f"The session database cannot be used: {trouble}.")


def describe(dsn: str) -> str:
    """The connection string as people may see it: which database and user, never a password or another setting."""
    trouble = problem(dsn)
    if trouble == AMBIGUOUS:
        return "postgresql (a URL whose user, password or database name needs percent-encoding)"
    if trouble == NO_DRIVER:
        return "postgresql (not shown: psycopg is not installed)"
    if trouble:
        return "postgresql (an unreadable connection string)"
    params = _parse(dsn)
    shown = " ".join(f"{name}={_quoted(params[name])}" for name in SHOWN if params.get(name))
    return f"postgresql: {shown}" if shown else "postgresql (from the PG* environment)"


def scrub(text: str, dsn: str) -> str:
    """``text`` (a server's or libpq's message) on one line, without any password it could hold.

    Taken out: any ``scheme://user:password@``, the DSN's password as written and as
    decoded, ``PGPASSWORD``, the password of the service file entry the DSN names (or
    ``PGSERVICE``), and secret-looking environment values (``redact``). A message about
    an unreadable connection string is replaced whole: libpq quotes the unreadable part.
    """
    trouble = problem(dsn)
    if trouble:
        return trouble[0].upper() + trouble[1:]
    text = _URL_PASSWORD.sub(r"\1***@", text)
    for secret in sorted(_passwords(dsn), key=len, reverse=True):
        text = text.replace(secret, "***")
    return " ".join(redact(text).split())


def _parse(dsn: str) -> dict[str, str]:
    """libpq's reading of ``dsn`` (ValueError if it cannot read it; ImportError without psycopg)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {name: str(value) for name, value in conninfo_to_dict(dsn).items()}
    except psycopg.Error:
        raise ValueError("unreadable connection string") from None


def _misplaced_at(url: str) -> bool:
    """Whether an ``@`` is left where libpq reads the host or database name.

    libpq ends the user and password at the first ``@`` or ``/``: an ``@`` after that
    (before the query) means the password held one of the two, and was cut.
    """
    rest = _URL.sub("", url, count=1)
    credentials = re.match(r"[^@/]*@", rest)
    after = rest[credentials.end() :] if credentials else rest
    return "@" in after.split("?", 1)[0]


def _passwords(dsn: str) -> set[str]:
    """Every form of a password this connection may use, as it could appear in a message."""
    params = _parse(dsn)
    found = {value for name, value in params.items() if "password" in name and value}
    found |= {urllib.parse.quote(value, safe="") for value in found}
    if _URL.match(dsn):  # as written in the URL, whatever libpq decoded it to
        userinfo = _URL.sub("", dsn, count=1).split("/", 1)[0].rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    if os.environ.get("PGPASSWORD"):
        found.add(os.environ["PGPASSWORD"])
    service = params.get("service") or os.environ.get("PGSERVICE")
    if service:
        found |= _service_passwords(service)
    return {secret for secret in found if secret}


def _service_passwords(service: str) -> set[str]:
    """The passwords the connection service files hold for ``service`` (libpq reads them only when connecting)."""
    files = [os.environ.get("PGSERVICEFILE") or os.path.expanduser("~/.pg_service.conf")]
    files.append(os.path.join(os.environ.get("PGSYSCONFDIR", "/etc/postgresql-common"), "pg_service.conf"))
    found = set()
    for path in files:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue  # libpq will say what is wrong with the file
        if parser.has_option(service, "password"):
            found.add(parser.get(service, "password"))
    return found


def _quoted(value: str) -> str:
    """A value as libpq's key=value form writes it (quoted when it holds spaces or quotes)."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
