"""The .env rule on real files and the real process environment: keys only, never overriding."""

from __future__ import annotations

import os

import pytest

from oblix_jupyter.kernel.envfile import DotenvResult, load_dotenv

KEYS = ["OPENAI_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "MY_SERVICE_SECRET", "GROQ_KEY"]
REFUSED = [
    "OPENAI_API_BASE", "OPENAI_BASE_URL", "AZURE_API_BASE", "HTTPS_PROXY", "http_proxy", "ALL_PROXY", "no_proxy",
    "OBLIX_HOME", "OBLIX_MODEL", "OBLIX_API_KEY", "LITELLM_MASTER_KEY", "LITELLM_LOG", "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE", "PYTHONPATH", "TOKENIZERS_PARALLELISM",
]


@pytest.fixture
def environ():
    """The process environment, put back as it was whatever the test's .env loaded into it."""
    before = dict(os.environ)
    yield os.environ
    os.environ.clear()
    os.environ.update(before)


def test_only_keys_are_loaded_and_everything_else_is_reported_as_ignored(tmp_path, environ):
    for name in KEYS + REFUSED:
        environ.pop(name, None)
    lines = ["# a comment", "", "not an assignment", "BAD-NAME=1"]
    lines += [f"export {name}='value of {name}'" for name in KEYS] + [f"{name}=http://127.0.0.1:9" for name in REFUSED]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    result = load_dotenv(str(tmp_path))
    assert result == DotenvResult(str(tmp_path / ".env"), loaded=tuple(KEYS), ignored=tuple(REFUSED))
    assert {name: environ.get(name) for name in KEYS} == {name: f"value of {name}" for name in KEYS}
    assert not set(REFUSED) & set(environ)
    assert "value of" not in result.describe() and "127.0.0.1" not in result.describe()


def test_a_key_already_set_is_kept_and_the_first_line_for_a_name_wins(tmp_path, environ):
    environ["OPENAI_API_KEY"] = "the user's own"
    environ.pop("HF_TOKEN", None)
    (tmp_path / ".env").write_text("OPENAI_API_KEY=the file's\nHF_TOKEN=first\nHF_TOKEN=second\n")
    result = load_dotenv(str(tmp_path))
    assert (result.loaded, result.already_set, result.ignored) == (("HF_TOKEN",), ("OPENAI_API_KEY",), ())
    assert (environ["OPENAI_API_KEY"], environ["HF_TOKEN"]) == ("the user's own", "first")
    assert result.describe() == f"loaded HF_TOKEN from {tmp_path / '.env'}; kept OPENAI_API_KEY as already set"


def test_no_file_is_none_and_a_file_without_names_says_so(tmp_path, environ):
    assert load_dotenv(str(tmp_path)) is None
    (tmp_path / ".env").write_text("# nothing yet\n")
    assert load_dotenv(str(tmp_path)).describe() == f"{tmp_path / '.env'} sets nothing"
