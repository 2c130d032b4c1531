"""Shared fixtures: a private store for every test and the loopback model server.

Tests live in a folder per layer (client, context, frontends, kernel, models, store);
``ui/`` holds the browser tests of the whole product, and runs last: Playwright's sync
API keeps an event loop running in the main thread, after which ``asyncio.run`` fails.
"""

from __future__ import annotations

import os

import pytest
from model_server import ModelServer

TEST_MODEL = "openai/test-model"
TEST_KEY = "sk-test-0123456789abcdef"  # looks like a key, so leaks of it can be detected

# litellm would otherwise try to download its price map when first imported.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """No test may read or write the real ~/.oblix, nor inherit a configured model."""
    monkeypatch.setenv("OBLIX_HOME", str(tmp_path / "oblix-home"))
    for name in ("OBLIX_MODEL", "OBLIX_FALLBACK_MODELS", "OPENAI_API_BASE", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "oblix-home"


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of our own for the whole test session, its database upgraded; made on first use.

    If it cannot start, every test that uses it fails (never skips): the PostgreSQL
    store must be tested wherever the tests run.
    """
    from postgres_server import running  # here, not at the top: psycopg loads only in runs that use PostgreSQL

    with running() as server:
        yield server


@pytest.fixture(scope="session")
def embedder():
    """The embedding model, loaded once for the run; the tests that need it are skipped where it cannot be loaded."""
    from oblix_jupyter.context.embedder import load_embedder, unavailable_reason

    loaded = load_embedder()
    if loaded is None:
        pytest.skip(unavailable_reason() or "the embedding model cannot be loaded")
    return loaded


@pytest.fixture(scope="session")
def model_server():
    with ModelServer() as server:
        yield server


@pytest.fixture
def server(model_server):
    """The loopback server with fresh behaviour and an empty request log."""
    model_server.reset()
    yield model_server
    model_server.release()


@pytest.fixture
def tool_model(model_env, monkeypatch):
    """The test model, declared able to call tools (as a self-hosted endpoint would be)."""
    monkeypatch.setenv("OBLIX_TOOL_MODELS", TEST_MODEL)
    return model_env


@pytest.fixture
def model_env(server, monkeypatch):
    """A model configured the way a user configures one: environment variables only."""
    monkeypatch.setenv("OBLIX_MODEL", TEST_MODEL)
    monkeypatch.setenv("OPENAI_API_BASE", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    return server
