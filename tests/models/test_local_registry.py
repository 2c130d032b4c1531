"""The user's own GGUF files as ``local/NAME``: the registry, the file's chat template, and the input budget.

The registered files are copies of the bundled SmolLM2 file under other names and
paths, run by the real engine; the prompt checked is the request handed to llama.cpp.
Answers are a few tokens long: these tests check what was sent, not what the model says.
"""

from __future__ import annotations

import stat

import pytest
from local_gguf import bundled_copy, without_chat_template

from oblix_jupyter.client import OblixClient
from oblix_jupyter.errors import BadArguments, ModelError
from oblix_jupyter.frontends.display import footer
from oblix_jupyter.models import gguf_file, local_engine, local_model, local_registry

if not local_model.is_available():
    pytest.skip(f"local model not installed: {local_model.unavailable_reason()}", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)

# SmolLM2's chat template, written out by hand: what the model must read for this conversation.
SMOLLM_PROMPT = (
    "<|im_start|>system\nAnswer in one word.<|im_end|>\n"
    "<|im_start|>user\nName one colour.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
CONVERSATION = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name one colour."}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return bundled_copy(folder / "My-Model.Q4.gguf"), without_chat_template(folder / "plain.gguf")


@pytest.fixture(autouse=True)
def no_process_model(monkeypatch):
    monkeypatch.delenv(local_model.MODEL_ENV, raising=False)
    monkeypatch.delenv("OBLIX_MODEL", raising=False)


def last_request(model: str) -> dict:
    """The last request ``model``'s engine was handed, as llama.cpp received it."""
    generation = local_model.last_generation(model)
    assert generation is not None
    return generation.request


def test_registry_is_private_and_refuses_what_it_cannot_serve(files, private_home, tmp_path):
    copy, _ = files
    assert local_model.add(copy) == "local/my-model.q4"  # named after the file
    assert local_model.add(copy, name="mine") == "local/mine"
    assert local_model.add(copy, name="mine") == "local/mine"  # again: harmless
    path = local_registry.registry_path()
    assert path.parent == private_home
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_home.stat().st_mode) == 0o700
    assert local_registry.registered() == {"my-model.q4": copy.resolve(), "mine": copy.resolve()}

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("just text")
    for path_, name, says in [
        (not_gguf, None, "not a GGUF model file"),
        (tmp_path / "absent.gguf", None, "is not a file"),
        (copy, "smollm2-135m", "bundled model's name"),
        (copy, "../escape", "cannot be a model name"),
        (files[1], "mine", "is already"),
    ]:
        with pytest.raises(BadArguments, match=says):
            local_model.add(path_, name=name)
    assert set(local_registry.registered()) == {"my-model.q4", "mine"}


def test_metadata_is_read_from_the_file(files):
    copy, plain = files
    info = gguf_file.read_info(copy)
    assert (info.architecture, info.context_length, info.eos_token) == ("llama", 8192, "<|im_end|>")
    assert "<|im_start|>" in info.chat_template
    assert gguf_file.read_info(plain).chat_template is None
    with pytest.raises(gguf_file.NotAGGUF):
        gguf_file.read_info(__file__)


def test_a_registered_file_chats_with_its_own_template(files):
    copy, _ = files
    model = local_model.add(copy, name="mine")
    client = OblixClient(model=model)
    result = client.execute_sync(CONVERSATION[1]["content"], max_tokens=3)
    assert result["model"] == "local/mine"
    assert result["response"]
    default_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert last_request(model)["prompt"] == SMOLLM_PROMPT.replace("Answer in one word.", default_system)
    assert local_model.engine(model) is not local_model.engine(local_model.LOCAL_MODEL)  # its own engine
    assert local_model.notice("local/mine") is None  # not the bundled model's warning: this file is the user's

    local_model.complete_sync(local_model.build_request(CONVERSATION, {"max_tokens": 2}, model), model)
    assert last_request(model)["prompt"] == SMOLLM_PROMPT


def test_a_file_without_a_template_gets_a_plain_transcript_and_a_notice(files):
    _, plain = files
    model = local_model.add(plain, name="plain")
    result = OblixClient(model=model).turn("Name one colour.", max_tokens=3)
    assert last_request(model)["prompt"] == "User: Name one colour.\n\nAssistant:"
    assert last_request(model)["stop"] == ["\nUser:"]
    assert "no chat template" in (result.notice or "")
    assert "no chat template" in footer(result)


def test_a_vanished_or_removed_file_is_a_clear_error_and_the_fallback_answers(files, tmp_path, model_env):
    moved = bundled_copy(tmp_path / "soon-gone.gguf")
    model = local_model.add(moved, name="gone")
    moved.unlink()
    client = OblixClient(model=model)
    with pytest.raises(ModelError, match=f"local/gone: its file {moved} is gone"):
        client.execute_sync("Hello", max_tokens=2)
    local_model.remove(model)
    with pytest.raises(ModelError, match="local/gone is not a registered local model"):
        client.execute_sync("Hello", max_tokens=2)
    # a missing file is like a server that cannot be reached: the next model answers
    result = OblixClient(model=model, fallback_models=["openai/test-model"]).execute_sync("Hello")
    assert result["model"] == "openai/test-model"
    assert result["failed_models"][0][0] == model


def test_oblix_local_model_names_a_file_for_one_process(files, monkeypatch):
    copy, _ = files
    monkeypatch.setenv(local_model.MODEL_ENV, str(copy))
    assert OblixClient().models_for(None) == ["local/my-model.q4"]
    assert local_model.resolve("local/my-model.q4").path == copy
    assert local_registry.registered() == {}  # nothing written


def test_the_budget_follows_the_measured_reading_speed(files):
    copy, _ = files
    model = local_model.add(copy, name="mine")
    assumed = int(local_model.ASSUMED_READING_SPEED * local_model.FIRST_WORD_SECONDS) // 100 * 100
    assert local_model.input_budget(model) == max(local_model.MIN_INPUT_TOKENS, assumed)  # nothing measured yet
    local_registry.record_speed("mine", reading=1000.0)
    assert local_model.input_budget(model) == 3000
    local_registry.record_speed("mine", reading=50.0)
    assert local_model.input_budget(model) == local_model.MIN_INPUT_TOKENS
    local_registry.record_speed("mine", reading=90000.0)
    assert local_model.input_budget(model) == 8192  # never past the window


def test_a_long_session_stays_within_the_budget_and_the_footer_says_so(files):
    copy, _ = files
    model = local_model.add(copy, name="mine")
    local_registry.record_speed("mine", reading=200.0)  # 600 tokens in 3 s
    client = OblixClient(model=model, semantic=False)
    session_id = client.create_session_sync(title="long")
    for number in range(40):
        client.session_manager.save_message(session_id, f"Note {number}: the column c{number} holds {number * 7} rows of sales data.", role="user")
        client.session_manager.save_message(session_id, f"Noted: c{number} has {number * 7} rows.", role="assistant", model=model)
    result = client.turn("How many rows does c3 hold?", session_id=session_id, max_tokens=4)
    plan = result.plan
    assert plan.budget <= 600 - 4
    assert plan.used <= plan.budget
    assert plan.omitted  # the session did not fit: something was left out for speed
    assert 0 < (result.usage["prompt_tokens"] or 0) < 1000  # as the model counted what it read
    assert "input limited to 600 tokens" in footer(result)

    roomy = OblixClient(model=model, semantic=False, local_max_input_tokens=8000).turn(
        "How many rows does c3 hold?", session_id=session_id, max_tokens=4
    )
    assert not roomy.plan.omitted
    assert "input limited" not in footer(roomy)


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (8, 7)])
def test_threads_leave_a_core_and_the_environment_overrides(monkeypatch, cores, threads):
    monkeypatch.delenv(local_engine.THREADS_ENV, raising=False)
    assert local_engine.threads_for(cores) == threads
    monkeypatch.setenv(local_engine.THREADS_ENV, "3")
    assert local_engine.threads_for(cores) == 3
    monkeypatch.setenv(local_engine.THREADS_ENV, "zero")
    assert local_engine.threads_for(cores) == threads


def test_a_damaged_registry_is_an_error_naming_it_not_a_crash(private_home):
    private_home.mkdir(parents=True, exist_ok=True)
    local_registry.registry_path().write_text("{not json")
    with pytest.raises(local_registry.RegistryUnreadable, match="local_models.json"):
        local_registry.registered()
    assert "local_models.json" in local_model.problem("local/whatever")
    assert local_model.problem(local_model.LOCAL_MODEL) is None  # the bundled model does not need the registry


@pytest.mark.parametrize(
    "template",
    [
        "{{ cycler.__init__.__globals__.os.system('touch ' + messages[0].content) }}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
        "{{ messages.append({'role': 'user', 'content': 'injected'}) }}{{ messages | length }}",
    ],
)
def test_a_hostile_chat_template_cannot_reach_python(template, tmp_path):
    """A GGUF file is data from wherever it was downloaded: its template runs sandboxed, and a refusal is one error line."""
    from jinja2 import TemplateError

    touched = tmp_path / "pwned"
    info = gguf_file.read_info(local_model.gguf_path())
    hostile = gguf_file.GGUFInfo(**{**info.__dict__, "chat_template": template})
    messages = [{"role": "user", "content": str(touched)}]
    with pytest.raises(TemplateError):
        local_engine.render_prompt(messages, hostile)
    assert not touched.exists()
    assert messages == [{"role": "user", "content": str(touched)}]


def test_templates_that_refuse_a_system_message_or_write_the_bos_token_are_met():
    """As Gemma's templates do; llama.cpp adds the BOS itself when the file says so, so the template's is dropped."""
    info = gguf_file.read_info(local_model.gguf_path())
    strict = (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    )
    gemma_like = gguf_file.GGUFInfo(**{**info.__dict__, "chat_template": strict, "bos_token": "<bos>", "add_bos_token": True})
    prompt, stops = local_engine.render_prompt(CONVERSATION, gemma_like)
    assert prompt == "<user>Answer in one word.\n\nName one colour.<assistant>"
    assert stops == []
    own_bos = gguf_file.GGUFInfo(**{**gemma_like.__dict__, "add_bos_token": False})
    assert local_engine.render_prompt(CONVERSATION[1:], own_bos)[0] == "<bos><user>Name one colour.<assistant>"
