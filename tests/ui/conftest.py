"""Real JupyterLab in headless Chromium: one server and one browser for all the browser tests.

JupyterLab runs on 127.0.0.1 with a fixed token and every Jupyter, IPython and XDG
directory in a temporary folder (the venv's ``share/jupyter`` stays visible, so the
built extension and the kernel spec are found). Its kernels inherit a model pointed at
the loopback test server, which runs in this pytest process, so tests script its
behaviour and read what it was sent. A failing test leaves a screenshot in
``test-artifacts/ui/``, named in the failure report.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest
from waiting import wait_until

from oblix_jupyter.sessions import SessionManager

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "oblix-ui-test-token"
MODEL = "openai/test-model"  # the loopback server answers as "test-model"
MODEL_KEY = "sk-test-ui-0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
START_TIMEOUT = 90.0  # seconds for JupyterLab to answer
WAIT_MS = 45_000  # default for every browser-side wait


def user_messages(request_body: dict) -> list[str]:
    """The user turns of one request the loopback model server received."""
    return [m["content"] for m in request_body["messages"] if m["role"] == "user"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Lab:
    """The running JupyterLab: where its files and its kernels' Oblix store are."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.work = root / "work"
        self.oblix_home = root / "oblix-home"
        self.log = root / "jupyter.log"
        self.url = f"http://127.0.0.1:{port}"

    def store(self) -> SessionManager:
        return SessionManager(self.oblix_home / "sessions")

    def write_notebook(self, path: str, sources: Sequence[str]) -> str:
        """A notebook of code cells at ``path`` (relative to the server root); returns ``path``."""
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, str(target))
        return path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def _lab_environment(root: Path, model_url: str) -> dict[str, str]:
    dirs = {
        "HOME": "home",
        "JUPYTER_CONFIG_DIR": "jupyter-config",
        "JUPYTER_DATA_DIR": "jupyter-data",  # the venv's share/jupyter is still on the path
        "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
        "IPYTHONDIR": "ipython",
        "XDG_CONFIG_HOME": "xdg-config",
        "XDG_DATA_HOME": "xdg-data",
        "XDG_CACHE_HOME": "xdg-cache",
        "XDG_RUNTIME_DIR": "xdg-runtime",
        "OBLIX_HOME": "oblix-home",
    }
    env = {name: value for name, value in os.environ.items() if not name.startswith(("JUPYTER_", "JPY_", "OBLIX_", "OPENAI_"))}
    for name, folder in dirs.items():
        path = root / folder
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = str(path)
    env.update(
        OBLIX_MODEL=MODEL,
        OPENAI_API_BASE=model_url,
        OPENAI_API_KEY=MODEL_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    settings = Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return env


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright (no browser is ever downloaded)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def _serving(lab: Lab, model_url: str, app: str, flags: Sequence[str]) -> Iterator[Lab]:
    """``python -m app`` (JupyterLab or Notebook 7) serving ``lab.work`` on ``lab.url``, stopped afterwards."""
    port = lab.url.rsplit(":", 1)[1]
    command = [
        sys.executable, "-m", app, "--allow-root", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={lab.work}", *flags,
    ]  # fmt: skip
    with lab.log.open("w") as log:
        process = subprocess.Popen(command, env=_lab_environment(lab.root, model_url), stdout=log, stderr=subprocess.STDOUT)

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{app} exited ({process.returncode}):\n{lab.log_tail()}")
        try:
            with urllib.request.urlopen(f"{lab.url}/api/status?token={TOKEN}", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(answering, START_TIMEOUT, f"{app} to answer")
        yield lab
    finally:
        process.terminate()  # jupyter_server shuts its kernels down on SIGTERM
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _new_lab(tmp_path_factory: pytest.TempPathFactory, name: str) -> Lab:
    root = tmp_path_factory.mktemp(name)
    lab = Lab(root, _free_port())
    lab.work.mkdir()
    return lab


@pytest.fixture(scope="session")
def lab(browser, model_server, tmp_path_factory) -> Iterator[Lab]:
    """A JupyterLab server on a loopback port, its kernels talking to the test model server."""
    with _serving(_new_lab(tmp_path_factory, "jupyterlab"), model_server.url, "jupyterlab", ["--LabApp.expose_app_in_browser=True"]) as lab:
        yield lab


@pytest.fixture(scope="module")
def notebook7(browser, model_server, tmp_path_factory) -> Iterator[Lab]:
    """A Jupyter Notebook 7 server (the same extension, another shell), set up like ``lab``."""
    flags = ["--JupyterNotebookApp.expose_app_in_browser=True"]
    with _serving(_new_lab(tmp_path_factory, "notebook7"), model_server.url, "notebook", flags) as lab:
        yield lab


class LabPage:
    """One browser tab on the shared JupyterLab, with the waits the tests need."""

    timeout_ms = WAIT_MS
    wait_until = staticmethod(wait_until)

    def __init__(self, page: Any, lab: Lab, workspace: str) -> None:
        self.page = page
        self.lab = lab
        self.workspace = workspace
        self.path = ""

    def evaluate(self, script: str, arg: Any = None, timeout_ms: int = WAIT_MS) -> Any:
        """Run an async function ``(arg) => ...`` in the page, failing after ``timeout_ms``."""
        return self.page.evaluate(
            f"""async ([arg, ms]) => {{
                let timer;
                const limit = new Promise((_, reject) => {{ timer = setTimeout(() => reject(new Error('timed out after ' + ms + ' ms')), ms); }});
                try {{ return await Promise.race([({script})(arg), limit]); }} finally {{ clearTimeout(timer); }}
            }}""",
            [arg, timeout_ms],
        )

    def open_notebook(self, path: str) -> None:
        """Open ``path`` in this test's own workspace and wait for the app and an idle kernel."""
        self.path = path
        self.page.goto(f"{self.lab.url}/lab/workspaces/{self.workspace}/tree/{path}?token={TOKEN}")
        self.wait_for_app()

    def reload(self) -> None:
        self.page.reload()
        self.wait_for_app()

    def wait_for_app(self) -> None:
        self.page.wait_for_function("() => !!window.jupyterapp", timeout=WAIT_MS)
        self.evaluate("async () => { await window.jupyterapp.started; await window.jupyterapp.restored; }")
        # The /tree/<path> URL is routed after `restored`: the file browser opens the notebook
        # again (router:tree, filebrowser:open-path, docmanager:open, which asks the server
        # before it activates the notebook) and drops jp-mod-restoring when done. Until then a
        # command run or the focus taken closes the modal command palette, and a key meant for
        # it goes to the notebook (seen under load: the chat panel never asked for after a reload).
        self.page.wait_for_function(
            "() => { const fb = document.getElementById('filebrowser'); return !!fb && !fb.classList.contains('jp-mod-restoring'); }",
            timeout=WAIT_MS,
        )
        self.page.wait_for_function(
            "(path) => [...window.jupyterapp.shell.widgets('main')].some(w => w.context && w.context.path === path)",
            arg=self.path,
            timeout=WAIT_MS,
        )
        self.evaluate(
            "async (path) => { const w = [...jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path);"
            " jupyterapp.shell.activateById(w.id); await w.context.ready; await w.sessionContext.ready; }",
            self.path,
        )
        self.wait_for_kernel()

    def wait_for_kernel(self) -> None:
        """The notebook's kernel is connected and idle."""
        self.page.wait_for_function(
            """() => { const sc = jupyterapp.shell.currentWidget?.sessionContext;
                       const kernel = sc?.session?.kernel;
                       return !!kernel && kernel.connectionStatus === 'connected' && sc.kernelDisplayStatus === 'idle'; }""",
            timeout=WAIT_MS,
        )

    def server_session_paths(self) -> list[str]:
        """The notebook paths of the server's sessions (its REST API, not the page's view of it)."""
        with urllib.request.urlopen(f"{self.lab.url}/api/sessions?token={TOKEN}", timeout=10) as response:
            return [session["path"] for session in json.load(response)]

    def set_cell(self, index: int, source: str) -> None:
        self.evaluate("async ([i, s]) => jupyterapp.shell.currentWidget.content.model.cells.get(i).sharedModel.setSource(s)", [index, source])

    def run_cell(self, index: int, timeout_ms: int = WAIT_MS) -> None:
        """Run one cell as Shift+Enter would, and wait until it has finished."""
        self.evaluate(
            """async (i) => { const notebook = jupyterapp.shell.currentWidget.content;
                              notebook.activeCellIndex = i;
                              await jupyterapp.commands.execute('notebook:run-cell'); }""",
            index,
            timeout_ms,
        )
        self.wait_for_kernel()

    def output_locator(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea")

    def record_changes(self, selector: str, name: str) -> None:
        """Keep every distinct text of the element ``selector`` from now on, in ``window[name]``."""
        self.evaluate(
            """async ([selector, name]) => {
                const node = document.querySelector(selector);
                const seen = window[name] = [node.textContent];
                new MutationObserver(() => { const text = node.textContent; if (text !== seen[seen.length - 1]) seen.push(text); })
                    .observe(node, { subtree: true, childList: true, characterData: true });
            }""",
            [selector, name],
        )

    def recorded(self, name: str) -> list[str]:
        return self.page.evaluate("(name) => window[name]", name)

    def open_chat_from_palette(self) -> Any:
        """Run "Oblix: open chat" from the command palette, opened by its shortcut; returns the docked panel."""
        self.page.keyboard.press("Control+Shift+C")
        search = self.page.locator(".lm-CommandPalette-input")
        search.wait_for(state="visible", timeout=WAIT_MS)
        search.fill("Oblix: open chat")
        self.page.locator(".lm-CommandPalette-item", has_text="Oblix: open chat").first.wait_for(timeout=WAIT_MS)
        search.press("Enter")
        chat = self.page.locator("#jp-right-stack .jp-OblixChat .oblix-chat")
        chat.wait_for(state="visible", timeout=WAIT_MS)
        return chat

    def chat_from_toolbar(self) -> Any:
        """Click the notebook toolbar's "Chat" button; returns where the docked panel will be."""
        self.page.locator(".jp-NotebookPanel-toolbar [data-jp-item-name=oblixChat] button").click()
        return self.page.locator("#jp-right-stack .jp-OblixChat .oblix-chat")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@contextlib.contextmanager
def browser_tab(browser: Any, lab: Lab, request: pytest.FixtureRequest, workspace: str, viewport: dict[str, int]) -> Iterator[LabPage]:
    """A fresh browser context on ``lab``, its kernels shut down afterwards (shared by JupyterLab's and Notebook 7's tabs)."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    tab = LabPage(page, lab, workspace=workspace)
    request.node.lab_page = tab
    try:
        yield tab
    finally:
        try:
            tab.evaluate("async () => jupyterapp.serviceManager.sessions.shutdownAll()", timeout_ms=15_000)
        except Exception:  # the page may be what failed; the server's exit stops the kernels anyway
            pass
        context.close()


@pytest.fixture
def jlab(browser, lab, request) -> Iterator[LabPage]:
    """A fresh browser tab on the shared JupyterLab, in a workspace of the test's own."""
    with browser_tab(browser, lab, request, request.node.name.replace("_", "-"), {"width": 1400, "height": 900}) as tab:
        yield tab


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failing browser test, save a screenshot and name it in the report."""
    outcome = yield
    report = outcome.get_result()
    tab = getattr(item, "lab_page", None)
    if report.when == "call" and report.failed and tab is not None:
        try:
            path = tab.screenshot(f"failed-{item.name}")
            report.sections.append(("browser", f"screenshot of the failure: {path}\njupyter log tail:\n{tab.lab.log_tail()}"))
        except Exception as error:  # the browser itself may be gone
            report.sections.append(("browser", f"no screenshot: {error}"))

