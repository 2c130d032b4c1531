"""The one redaction, attacked: secrets planted anywhere in a notebook never come out of a tool, a summary or a record.

Hypothesis plants a key-shaped value (``sk-…``, ``ghp_…``, a JWT, a PEM key, a URL's
password...) or a value under a secret-looking name (a dict key, a DataFrame column, an
object's attribute, a dataclass field, an assignment in a cell's source, an exception's
message) at a random depth among ordinary data, runs every tool on every variable and
cell, summarises every variable, and looks for the secret in everything that came out;
an ordinary value planted beside it must still come out.
"""

from __future__ import annotations

import dataclasses
import string
import time

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oblix_jupyter.kernel.state import format_error
from oblix_jupyter.kernel.tools import CellHistory, KernelTools
from oblix_jupyter.kernel.variables import summarize_variables
from oblix_jupyter.redaction import WITHHELD, is_secret_name, redact

ALNUM = string.ascii_letters + string.digits
SECRET_NAMES = ["password", "db_password", "api_key", "OPENAI_API_KEY", "token", "auth_token", "client_secret", "passwd", "private_key", "apikey"]
ORDINARY_WORDS = ["city", "price", "note", "alpha", "rows", "total", "label", "region", "units", "owner", "path", "x"]


def chars(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=low, max_size=high)


def jwt(parts: tuple[str, str, str]) -> str:
    return f"eyJ{parts[0]}.eyJ{parts[1]}.{parts[2]}"


SHAPED = st.one_of(
    chars(ALNUM + "-_", 20, 48).map(lambda body: "sk-" + body),
    chars(ALNUM, 20, 48).map(lambda body: "sk-proj-" + body),
    st.tuples(st.sampled_from("pousr"), chars(ALNUM, 36, 36)).map(lambda p: f"gh{p[0]}_{p[1]}"),
    chars(ALNUM + "_", 22, 60).map(lambda body: "github_pat_" + body),
    st.tuples(st.sampled_from("bpar"), chars(ALNUM + "-", 10, 40)).map(lambda p: f"xox{p[0]}-{p[1]}"),
    chars(string.ascii_uppercase + string.digits, 16, 16).map(lambda body: "AKIA" + body),
    chars(ALNUM + "_-", 35, 35).map(lambda body: "AIza" + body),
    st.tuples(chars(ALNUM + "_-", 6, 30), chars(ALNUM + "_-", 6, 30), chars(ALNUM + "_-", 8, 40)).map(jwt),
    chars(ALNUM + "+/", 40, 120).map(lambda body: f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"),
)


def mixed(value: str) -> bool:
    """Upper and lower case and a digit: a password as sites demand, and never a word of the tools' own text."""
    return any(c.isupper() for c in value) and any(c.islower() for c in value) and any(c.isdigit() for c in value)


# A URL's password: the needle is the password, whatever its characters (@ and % included).
URL_PASSWORDS = st.tuples(
    st.sampled_from(["postgresql", "mysql+pymysql", "redis", "https", "amqp"]),
    chars(string.ascii_lowercase, 3, 8),
    chars(ALNUM + "@%!*~-", 6, 20).filter(mixed),
)
# A short password, as people choose them.
NAMED_VALUES = chars(ALNUM, 6, 14).filter(mixed)
ORDINARY = st.integers(10_000, 99_999).map(lambda n: f"plain{n}")


@dataclasses.dataclass(frozen=True)
class Planted:
    """A secret as it sits in the notebook: ``needle`` must never come out; ``name`` when a name marks it."""

    needle: str
    value: str  # what is stored (a URL for a URL's password)
    name: str | None = None


PLANTED = st.one_of(
    SHAPED.map(lambda key: Planted(key.split("\n")[1] if key.startswith("-----") else key, key)),
    URL_PASSWORDS.map(lambda p: Planted(p[2], f"{p[0]}://{p[1]}:{p[2]}@db.internal:5432/app")),
    st.tuples(st.sampled_from(SECRET_NAMES), NAMED_VALUES).map(lambda p: Planted(p[1], p[1], p[0])),
)


class Holder:
    """An object whose repr shows its attributes, as many classes' do."""

    def __init__(self, **fields: str) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return "Holder(" + ", ".join(f"{key}={value!r}" for key, value in self.__dict__.items()) + ")"


def nested(leaf: object, path: list[str]) -> object:
    """``leaf`` wrapped in dicts and lists along ``path``, each level with a sibling after it."""
    for step, level in zip(reversed(path), range(len(path))):
        leaf = {f"level{level}": leaf, "other": level} if step == "dict" else [leaf, level]
    return leaf


def cell_source(secret: Planted, ordinary: str, form: int) -> str:
    if secret.name is None:
        return f'note = "{ordinary}"\nendpoint = "{secret.value}"'
    forms = [
        f'note = "{ordinary}"\n{secret.name} = "{secret.value}"',
        f"note = '{ordinary}'\nclient.{secret.name} = '{secret.value}'",
        f'note = "{ordinary}"\nos.environ["{secret.name.upper()}"] = "{secret.value}"',
        f'note = "{ordinary}"\nconfig = {{"{secret.name}": "{secret.value}", "region": "eu"}}',
        f'note = "{ordinary}"\nconnect(host="db", {secret.name}="{secret.value}")',
        f'note = "{ordinary}"\n{secret.name}: str = "{secret.value}"',
    ]
    return forms[form % len(forms)]


def error_text(secret: Planted, ordinary: str) -> str:
    shown = f"{secret.name}={secret.value}" if secret.name else secret.value
    try:
        raise ConnectionError(f"failed for {ordinary}: {shown}")
    except ConnectionError as error:
        return format_error(error) or ""


def notebook(secret: Planted, ordinary: str, path: list[str], form: int) -> tuple[dict[str, object], CellHistory]:
    """Variables and cells holding ``secret`` everywhere it may hide, each beside ``ordinary``."""
    if secret.name is None:
        leaf: object = {"note": ordinary, "value": secret.value}
        frame = pd.DataFrame({"note": [ordinary, secret.value, "x"], "n": [1, 2, 3]})
        holder = Holder(note=ordinary, endpoint=secret.value)
        record = dataclasses.make_dataclass("Record", ["note", "endpoint"])(ordinary, secret.value)
    else:
        leaf = {"note": ordinary, secret.name: secret.value}
        frame = pd.DataFrame({"note": [ordinary, "y", "x"], secret.name: [secret.value, "a1b2c3", "z9y8x7"]})
        holder = Holder(note=ordinary, **{secret.name: secret.value})
        record = dataclasses.make_dataclass("Record", ["note", secret.name])(ordinary, secret.value)
    namespace: dict[str, object] = {
        "data": nested(leaf, path),
        "rows": nested([ordinary, leaf], path[:1]),
        "frame": frame,
        "holder": holder,
        "record": record,
        "series": frame.iloc[:, -1],
    }
    namespace["message"] = f"{ordinary} uses {secret.value} today"
    if secret.name is not None:  # a secret variable, whose value the message above echoes
        namespace[secret.name] = secret.value
    sources = ["", cell_source(secret, ordinary, form), "data", "holder"]
    return namespace, CellHistory(sources, {2: namespace["data"], 3: holder}, error_text(secret, ordinary))


def every_call(tools: KernelTools, namespace: dict[str, object]) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = [("list_variables", {}), ("last_error", {})]
    calls += [("notebook_cell", {"number": number}) for number in range(1, tools.cells.latest + 1)]
    for name, value in namespace.items():
        calls.append(("describe_variable", {"name": name}))
        if isinstance(value, pd.DataFrame):
            calls.append(("dataframe_rows", {"name": name}))
            calls += [("describe_variable", {"name": name, "column": str(column)}) for column in value.columns]
            calls.append(("dataframe_rows", {"name": name, "where": [{"column": "n", "op": ">", "value": 0}]} if "n" in value else {"name": name}))
    return calls


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLANTED, ORDINARY, st.lists(st.sampled_from(["dict", "list"]), max_size=3), st.integers(0, 5))
def test_a_planted_secret_never_comes_out_and_ordinary_values_do(secret, ordinary, path, form):
    namespace, cells = notebook(secret, ordinary, path, form)
    tools = KernelTools(namespace, cells=cells)
    seen = {}
    for name, arguments in every_call(tools, namespace):
        result = tools.run(name, arguments)
        record = tools.recorded(name, arguments, result.text)
        for text in (result.text, result.summary, record):
            assert secret.needle not in text, f"{name}({arguments}) gave the secret:\n{text}"
        seen[(name, arguments.get("name"), arguments.get("number"))] = result.text
    prompt = "look at " + " ".join(f"{{{name}}}" for name in namespace)
    for summary in summarize_variables(namespace, prompt, cap_tokens=400):
        assert secret.needle not in summary.text, summary.text

    for where in [("describe_variable", "data", None), ("describe_variable", "holder", None), ("describe_variable", "record", None),
                  ("dataframe_rows", "frame", None), ("notebook_cell", None, 1), ("notebook_cell", None, 2), ("last_error", None, None)]:
        assert ordinary in seen[where], f"{where} lost the ordinary value:\n{seen[where]}"
    assert "data" in seen[("list_variables", None, None)] and "frame" in seen[("list_variables", None, None)]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(SECRET_NAMES), NAMED_VALUES, ORDINARY)
def test_a_named_secret_is_sent_but_never_recorded(name, value, ordinary):
    """``--vars`` sends a secret on purpose, for one turn: the model sees it, the stored record does not."""
    namespace = {name: value, "note": ordinary}
    tools = KernelTools(namespace, [name], cells=CellHistory(["", f"{name} = {value!r}", name], {2: value}))
    for call, arguments in [("describe_variable", {"name": name}), ("list_variables", {}), ("notebook_cell", {"number": 2})]:
        result = tools.run(call, arguments)
        assert value in result.text, result.text
        assert value not in tools.recorded(call, arguments, result.text)
    (summary,) = summarize_variables(namespace, "", named=[name])
    assert value in summary.text


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("key sk-live-0123456789abcdefghij rejected", "sk-live-0123456789abcdefghij"),
        ("Authorization: Bearer abcdefghijklmnop1234", "abcdefghijklmnop1234"),
        ("token ghp_0123456789abcdefghijABCDEFGHIJ012345 and xoxb-1234-5678-abcdefgh", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
        ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
        ("'line\\nsk-ant-api03-abcdefghijklmnop'", "sk-ant-api03-abcdefghijklmnop"),  # a repr's escape does not hide it
        ("postgresql://bob:p@ss%40w0rd!@db.example.com:5432/app", "p@ss%40w0rd!"),
        ("could not connect to mysql+pymysql://root:hunter2@localhost/db", "hunter2"),
        ("host=db user=bob password=hunter2 dbname=app", "hunter2"),
        ("PGPASSWORD=hu2 psql -h db", "hu2"),
        ('openai.api_key = "sk-x"', "sk-x"),
        ('db_password = "hunter2"', "hunter2"),
        ("os.environ['OPENAI_API_KEY'] = 'abc123'", "abc123"),
        ('os.environ.setdefault("HF_TOKEN", "hf1")', "hf1"),
        ("{'token': 'abc', 'name': 'x'}", "abc"),
        ("Settings(user='bob', password='pw-777x')", "pw-777x"),
        ('api_key: str = "k1"', "k1"),
        ("KeyError: 'sk-live-0123456789abcdefghij'", "sk-live-0123456789abcdefghij"),  # an error still hides a key's shape
        ("secret = f'{prefix}-s3cr3t'", "s3cr3t"),
        ('"""\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"""', "MIIEpAIBAAKCAQEA"),
    ],
)
def test_shapes_and_names_are_withheld(text, hidden):
    redacted = redact(text)
    assert hidden not in redacted and WITHHELD in redacted
    assert redact(redacted) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "sorted(rows, key=len)",
        "sorted(rows, key=lambda r: r[1])",
        "task-force-management-system",
        "https://example.com/docs?page=2#section",
        "mail bob@example.com at 10:30",
        "df.groupby('city').price.mean()",
        "keys are alpha, beta",
        "for key, value in data.items():",
        "KeyError: 'prce'",  # a traceback's last line names the missing column: the model needs it
        "    raise KeyError(key) from err\nKeyError: 'revenue_2019'",
        "TokenError: ('EOF in multi-line statement', (1, 0))",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_environment_secrets_and_kept_values(monkeypatch):
    monkeypatch.setenv("SERVICE_PASSWORD", "hunter2")
    monkeypatch.setenv("SERVICE_TOKEN", "long-token-value-1234")
    assert redact("login hunter2 with long-token-value-1234 ok") == f"login {WITHHELD} with {WITHHELD} ok"
    assert redact("hunter22 stays") == "hunter22 stays", "a short value is withheld only where it stands alone"
    kept = "sk-live-0123456789abcdefghij"
    assert redact(f"use {kept} now", keep=[f"'{kept}'"]) == f"use {kept} now"


@pytest.mark.parametrize("text", ["ab" * 50_000, "a=" * 50_000, "x://y:" * 20_000, 'a="' * 30_000, 'api_key="""' * 10_000, "'key'" * 20_000])
def test_no_text_makes_the_redaction_slow(text):
    start = time.perf_counter()
    redact(text)
    assert time.perf_counter() - start < 1.0


@given(st.lists(st.sampled_from(ORDINARY_WORDS + ["=", ": ", ", ", "(", ")", "'", '"', "\n", " ", "1", "2.5", "[", "]"]), max_size=40))
def test_text_without_secrets_is_unchanged_and_redaction_is_idempotent(pieces):
    text = "".join(pieces)
    assert not any(is_secret_name(word) for word in ORDINARY_WORDS)
    assert redact(text) == text
