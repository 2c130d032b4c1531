"""A GGUF file the user registered, used as ``local/NAME`` from the command line, a notebook cell and the chat panel.

The file is a copy of the bundled model under another name and path, run by the real
engine in each front end's own process (the CLI's, a kernel's, this one for the panel).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
from kernels import outputs_text, run_cells
from local_gguf import bundled_copy
from waiting import wait_until

from oblix_jupyter.client import OblixClient
from oblix_jupyter.frontends.panel import ChatPanel
from oblix_jupyter.kernel.binding import NotebookBinding
from oblix_jupyter.models import local_model, local_registry
from oblix_jupyter.sessions import SessionManager

if not local_model.is_available():
    pytest.skip(f"local model not installed: {local_model.unavailable_reason()}", allow_module_level=True)

pytestmark = pytest.mark.timeout(180)


def oblix(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("OBLIX_MODEL", local_model.MODEL_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "oblix_jupyter.frontends.cli", *arguments], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def copy(tmp_path):
    return bundled_copy(tmp_path / "models" / "Tiny-Copy.gguf")


def test_local_add_list_ask_doctor_and_remove_from_the_command_line(copy, private_home):
    added = oblix("local", "add", str(copy), "--name", "tiny")
    assert added.returncode == 0, added.stderr
    assert "local/tiny is ready" in added.stdout
    assert stat.S_IMODE(local_registry.registry_path().stat().st_mode) == 0o600

    listed = oblix("local", "list").stdout
    assert re.search(rf"^local/tiny\s+{re.escape(str(copy))}, 98 MB, context 8192 tokens", listed, re.M), listed
    assert re.search(r"^local/smollm2-135m\s", listed, re.M)

    asked = oblix("ask", "--model", "local/tiny", "Name one colour.")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip()
    assert "tiny offline model" not in asked.stderr  # that warning is the bundled model's

    doctor = oblix("doctor").stdout
    assert re.search(rf"^local/tiny\s+{re.escape(str(copy))}", doctor, re.M), doctor

    copy.unlink()
    gone = oblix("ask", "--model", "local/tiny", "Hello")
    assert gone.returncode == 1 and "Traceback" not in gone.stderr
    assert f"local/tiny: its file {copy} is gone" in gone.stderr

    removed = oblix("local", "remove", "tiny")
    assert removed.returncode == 0 and "local/tiny removed" in removed.stdout
    again = oblix("local", "remove", "tiny")
    assert again.returncode == 1 and "local/tiny is not registered" in again.stderr
    bad = oblix("local", "add", str(copy.parent))
    assert bad.returncode == 1 and "is not a file" in bad.stderr and "Traceback" not in bad.stderr


def test_a_cell_asks_a_registered_model_and_the_budget_setting_reaches_it(copy, tmp_path):
    OblixClient.add_local_model(copy, "tiny")
    notebook = str(tmp_path / "work" / "local.ipynb")
    ran = run_cells(
        [
            "%load_ext oblix_jupyter",
            "%config Oblix.local_max_input_tokens = 700",
            "%%oblix --model local/tiny --max-tokens 3\nName one colour.",
            "%oblix model",
            'print(get_ipython().magics_manager.registry["Oblix"].client.local_max_input_tokens)',
        ],
        notebook,
    )
    answer = outputs_text(ran.nb.cells[2])
    assert "local/tiny" in answer  # the footer names the model that answered
    assert "Traceback" not in answer
    store = SessionManager()
    reply = store.get_session(store.bound_session(notebook))["messages"][-1]
    assert (reply["role"], reply["model"], reply.get("status")) == ("assistant", "local/tiny", None)
    assert reply["content"]
    assert "local/tiny" in outputs_text(ran.nb.cells[3])
    assert outputs_text(ran.nb.cells[4]).strip().endswith("700")


def test_the_panel_model_field_takes_a_registered_model(copy, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    model = OblixClient.add_local_model(copy, "tiny")
    client = OblixClient()
    binding = NotebookBinding(client, {})
    binding.reported_path = "work/panel.ipynb"
    panel = ChatPanel(client, namespace={}, binding=binding)
    try:
        panel.model_field.value = model
        panel.apply_model_button.click()
        assert client.session_manager.get_session(panel.session_id)["model"] == model
        panel.textarea.value = "Name one colour."
        panel.send_button.click()
        assert panel.wait(90)
        session = wait_until(lambda: client.session_manager.get_session(panel.session_id), 10, "the session")
        answer = session["messages"][-1]
        assert answer["role"] == "assistant" and answer["model"] == model and answer["content"]
        generation = local_model.last_generation(model)
        assert generation is not None and "Name one colour." in generation.request["prompt"]  # this file's engine answered
    finally:
        panel.stop()
        panel.wait(10)
        panel.close()
