"""The one redaction: what looks like a secret is withheld from every text bound for a model or the store.

Prompts, variable summaries, ``{name}`` interpolation, tool results, tracebacks, cell
sources and error messages all pass through ``redact``, so a key is recognised the same
way wherever it turns up. A value is withheld for its *shape* (the formats providers
give their keys: ``sk-…``, ``ghp_…``, ``xoxb-…``, ``AKIA…``, ``AIza…``, JWTs, PEM private
keys, the password of a ``scheme://user:password@host`` URL, a ``Bearer`` token) or for
its *name* (``db_password = "hunter2"``, ``"api_key": "…"``, ``password=…`` in a
connection string), whatever its length. What is withheld is replaced by ``WITHHELD``,
so the model knows something was there and says so rather than guessing.

Values that reach text through structure (a dict's keys, a DataFrame's columns, an
object's fields) are withheld by the code that renders them, with ``is_secret_name``;
this module sees only text, and imports nothing of the package, so every layer may use
it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection

WITHHELD = "[withheld: secret-looking]"

# Names that say their value is a secret. ``key`` alone is a weak sign (``keys``,
# ``sort_key``, ``key=len``): in code, a weak name's value is withheld only when it is a
# literal, while a strong name's value is withheld whatever it is (``PGPASSWORD=hunter2``).
_SECRET_NAME = re.compile(r"key|token|secret|passw(?:or)?d|passphrase|credential|authoriz", re.IGNORECASE)
_STRONG_NAME = re.compile(
    r"token|secret|passw(?:or)?d|passphrase|credential|authoriz|(?:api|access|private|auth|client|signing|encryption)[_-]?key",
    re.IGNORECASE,
)

# A key, a URL or a name is recognised where a word starts: after a character that cannot
# be part of it, or after an escape a repr writes (``'line\nsk-…'``), where the letter of
# the escape would otherwise hide it. Starting only there also keeps every pattern linear:
# a long run of letters is tried once, not from each of its letters.
_AFTER_ESCAPE = r"(?:(?<![{}])|(?<=\\[nrtabfv0])|(?<=\\x[0-9a-fA-F]{{2}}))"
_START = _AFTER_ESCAPE.format("A-Za-z0-9")
_SHAPES = re.compile(
    "|".join(
        [
            _START + r"sk-[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic (sk-ant-…) and many compatible services
            _START + r"(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",  # GitHub
            _START + r"xox[a-z]-[A-Za-z0-9\-]{10,}",  # Slack
            _START + r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])",  # AWS access key ids
            _START + r"AIza[0-9A-Za-z_\-]{35}",  # Google
            _START + r"eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",  # JWT: two base64url JSON objects and a signature
            r"-----BEGIN[A-Z ]* PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]* PRIVATE KEY-----|\Z)",  # to its end, or the text's
            r"(?<=Bearer )[A-Za-z0-9._~+/\-]{8,}=*",
        ]
    )
)
# The password of any URL: up to the last ``@`` before the host, since an unencoded ``@`` may be part of it.
# Bounded, as every pattern here, so that no text can make the search slow.
_URL_PASSWORD = re.compile(_AFTER_ESCAPE.format(r"A-Za-z0-9+.\-") + r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"<>]{0,256}:)(?P<secret>[^\s/'\"<>]{1,256})@")
# A literal, also one cut short by the end of a line or of the text; bounded, so that no text makes the search slow.
_QUOTED = r"""[rRbBuUfF]{0,2}(?:\"\"\"[\s\S]{0,4000}?(?:\"\"\"|\Z)|'''[\s\S]{0,4000}?(?:'''|\Z)|"(?:[^"\\\n]|\\.){0,2000}(?:"|(?=\n)|\Z)|'(?:[^'\\\n]|\\.){0,2000}(?:'|(?=\n)|\Z))"""
_NESTING = 8  # levels of values inside values looked into
# A list, tuple or set literal, to its first closing bracket: ``"api_key": ["…", "…"]`` in a DataFrame's source.
_BRACKETED = r"\[[^\]]{0,2000}(?:\]|\Z)|\([^)]{0,2000}(?:\)|\Z)|\{[^}]{0,2000}(?:\}|\Z)"
# ``name = value``, ``name: type = value``, ``name: value``, ``name == value``, ``["name"] = value``, ``"name", "value"`` (setdefault, setattr).
_NAMED_VALUE = re.compile(
    r"(?P<name>" + _AFTER_ESCAPE.format(r"A-Za-z0-9_.\-") + r"[A-Za-z_][A-Za-z0-9_.\-]*|\"[^\"\n]{1,100}\"|'[^'\n]{1,100}')"
    r"(?P<sep>\s*\]?\s*(?::\s*[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?\s*=(?!=)|:=|==?|:(?!//))\s*|(?<=[\"'])\s*,\s*(?=[rRbBuUfF]{0,2}[\"']))"
    rf"(?P<value>{re.escape(WITHHELD)}|{_QUOTED}|{_BRACKETED}|[^\s,;)}}\]'\"<>&]+)"
)


# ``KeyError: 'price'`` is a traceback's last line, naming a missing column, not a key's value:
# the commonest error in data code would otherwise reach the model without what it is about.
_ERROR_NAME = re.compile(r"(?:Error|Exception|Warning)$")


def is_secret_name(name: str) -> bool:
    """Whether a name (variable, key, column, field) says its value is a secret: withheld unless the user names it."""
    return bool(_SECRET_NAME.search(name))


def redact(text: str, keep: Collection[str] = (), withheld: Collection[str] = ()) -> str:
    """``text`` with every secret-looking value replaced by ``WITHHELD``, and the ``withheld`` values too (``withhold_values``).

    ``keep`` holds texts the user chose to send (a variable named with ``--vars``): a
    value found inside one of them stays. ``withheld`` are values known to be secret
    whatever their shape (the notebook's secret-named strings).
    """

    def kept(secret: str) -> bool:
        return any(secret in text for text in keep)

    def shaped(match: re.Match[str]) -> str:
        return match.group(0) if kept(match.group(0)) else WITHHELD

    def url(match: re.Match[str]) -> str:
        return match.group(0) if kept(match.group("secret")) else f"{match.group('head')}{WITHHELD}@"

    text = _SHAPES.sub(shaped, text)
    text = _URL_PASSWORD.sub(url, text)
    text = _withhold_named(text, kept)
    return withhold_values(text, [*_secret_environment(), *withheld], keep)


def _withhold_named(text: str, kept: Callable[[str], bool], depth: int = 0) -> str:
    """``text`` with the values of secret-looking names withheld, also inside the values of ordinary ones."""

    def named(match: re.Match[str]) -> str:
        name, value = match.group("name").strip("\"'"), match.group("value")
        literal = value.lstrip("rRbBuUfF")[:1] in ("'", '"') or value[:1] in "[({" and ("'" in value or '"' in value)
        if is_secret_name(name) and not _ERROR_NAME.search(name) and (literal or _STRONG_NAME.search(name)):
            inner = value.lstrip("rRbBuUfF").strip("\"'")
            return match.group(0) if inner in ("", WITHHELD) or kept(inner) else match.group("name") + match.group("sep") + WITHHELD
        # An ordinary name's value may hold named ones: {"db": {"token": "…"}}, "password=… in a string".
        inside = _withhold_named(value, kept, depth + 1) if len(value) > 2 and depth < _NESTING else value
        return match.group("name") + match.group("sep") + inside

    return _NAMED_VALUE.sub(named, text)


def withhold_values(text: str, values: Collection[str], keep: Collection[str] = ()) -> str:
    """``text`` without the given secret values (the environment's keys, the notebook's secret-named strings).

    A value of fewer than 8 characters is withheld only where it stands alone, so that a
    short password does not blank every word it is part of; fewer than 4 say nothing.
    """
    for value in values:
        if len(value) < 4 or value not in text or any(value in kept for kept in keep):
            continue
        if len(value) >= 8:
            text = text.replace(value, WITHHELD)
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", WITHHELD, text)
    return text


def _secret_environment() -> list[str]:
    """The values of this process's secret-named environment variables (``OPENAI_API_KEY``, ``PGPASSWORD``…)."""
    return [value for name, value in os.environ.items() if is_secret_name(name)]
