"""The chat panel's image picker, in a real kernel that displayed a matplotlib figure, against the loopback server.

The panel is built in the kernel, as ``%oblix chat`` builds it, and driven as a front
end's clicks would drive it: open the picker, toggle a thumbnail, send. What the model
server received and what the session keeps are read from outside the kernel.
"""

from __future__ import annotations

import io
import json
import pathlib
import threading

import pytest
from kernels import outputs_text, run_cells
from model_server import Behavior
from PIL import Image
from test_images_in_kernel import FIGURE, LOAD, image_parts, text_of

from oblix_jupyter.client import OblixClient
from oblix_jupyter.frontends.image_picker import thumbnail, tile_name
from oblix_jupyter.frontends.panel import ChatPanel
from oblix_jupyter.kernel.images import DisplayedImages, NotebookImage
from oblix_jupyter.sessions import SessionManager

pytestmark = pytest.mark.timeout(240)
MARK = "PICKER-STATE "

# Cell 3: one turn with the picker unused, then the figure chosen and sent (the model
# fails that turn), Retry, and one more turn: each step's state printed as JSON.
DRIVE_THE_PANEL = """
import json
import pathlib
from oblix_jupyter.client import OblixClient
from oblix_jupyter.frontends.panel import ChatPanel

panel = ChatPanel(OblixClient(), namespace=get_ipython().user_ns)
picker = panel.image_picker
state = {"button": [picker.button.description, picker.button.layout.display], "gallery_before": picker.gallery.layout.display,
         "tiles_before": len(picker.gallery.children)}

def ask(text):
    panel.textarea.value = text
    panel.send_button.click()
    assert panel.wait(60)

ask("Nothing attached, please.")
picker.button.value = True
picker.wait()
tiles = list(picker.gallery.children)
state["gallery"] = picker.gallery.layout.display
state["tiles"] = [[type(part).__name__ for part in tile.children] for tile in tiles]
state["names"] = [tile.children[-1].description for tile in tiles]
thumbnail = tiles[0].children[0]
state["thumbnail"] = [thumbnail.format, thumbnail.value.hex()]
tiles[0].children[-1].value = True
state["chips"] = [chip.description for chip in picker.chips.children]
state["chosen"] = [image.label for image in picker.chosen]
panel.textarea.value = "Why does this curve bend at 2019?"
panel.send_button.click()
state["right_after_send"] = {"chosen": len(picker.chosen), "chips": picker.chips.layout.display, "open": picker.button.value,
                             "toggled": tiles[0].children[-1].value}
assert panel.wait(60)
state["given_back"] = [[image.label for image in picker.chosen], panel.textarea.value, panel.retry_button.layout.display]
panel.textarea.value = ""
picker.take()
panel.retry_button.click()
assert panel.wait(60)
state["after_retry"] = [len(picker.chosen), panel.retry_button.layout.display]
ask("And the next question?")
state["session"] = panel.session_id
print("PICKER-STATE " + json.dumps(state))
"""


def test_the_picker_lists_the_figure_attaches_it_when_chosen_and_only_then_and_a_retry_resends_it(model_env, tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIX_VISION_MODELS", "openai/test-model")
    model_env.enqueue(Behavior(reply="A plain answer."), Behavior(status=500))  # the turn with the figure fails; its retry succeeds
    client = run_cells([LOAD, FIGURE, DRIVE_THE_PANEL], str(tmp_path / "nb" / "picker.ipynb"))
    shown = outputs_text(client.nb.cells[2])
    assert MARK in shown, shown[-2000:]
    state = json.loads(shown.split(MARK, 1)[1].splitlines()[0])

    assert state["button"] == ["Image (1)", None], "the button shows and counts the figure cell 2 displayed"
    assert state["gallery_before"] == "none" and state["tiles_before"] == 0, "no thumbnail is drawn before the picker opens"
    assert state["gallery"] is None and state["tiles"] == [["Image", "ToggleButton"]] and state["names"] == ["cell 2"]
    fmt, data = state["thumbnail"]
    picture = Image.open(io.BytesIO(bytes.fromhex(data)))
    assert fmt == "png" and picture.format == "PNG" and picture.size == (96, 72), "a small PNG drawn from the figure"
    assert state["chips"] == ["figure from cell 2 ×"] and state["chosen"] == ["figure from cell 2"]
    assert state["right_after_send"] == {"chosen": 0, "chips": "none", "open": False, "toggled": False}, "the choice clears on send"
    assert state["given_back"] == [["figure from cell 2"], "Why does this curve bend at 2019?", None], "a failed prompt comes back with its image"
    assert state["after_retry"] == [0, "none"], "the retry left the (emptied) picker alone and succeeded"

    unasked, chosen, retried, later = model_env.chat_requests()[-4:]
    assert image_parts(unasked) == [] and isinstance(unasked["messages"][-1]["content"], str), "nothing is attached unasked"
    (sent,) = image_parts(chosen)
    assert text_of(chosen["messages"][-1]) == "Why does this curve bend at 2019?"
    assert Image.open(io.BytesIO(sent)).size == (1024, 768)
    (resent,) = image_parts(retried)
    assert text_of(retried["messages"][-1]) == "Why does this curve bend at 2019?"
    assert Image.open(io.BytesIO(resent)).size == (1024, 768), "the retry sends the image the failed turn carried"
    assert image_parts(later) == [] and "[image sent earlier: figure from cell 2]" in json.dumps(later["messages"])

    store = SessionManager()
    session = store.get_session(state["session"])
    asked = [m for m in session["messages"] if m["role"] == "user"]
    assert [m["content"] for m in asked] == ["Nothing attached, please.", "Why does this curve bend at 2019?", "And the next question?"]
    assert "attachments" not in asked[0] and "attachments" not in asked[2]
    (entry,) = asked[1]["attachments"]
    assert entry["label"] == "figure from cell 2" and store.read_attachment(state["session"], entry["id"]) == sent
    assert session["messages"][-1]["content"] == "Echo: And the next question?"


def encoded(picture: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


def test_the_picker_shows_only_when_the_kernel_kept_an_image_and_draws_each_thumbnail_once_when_opened(model_env):
    memory = DisplayedImages()
    panel = ChatPanel(OblixClient(), namespace={}, displayed=memory)
    picker = panel.image_picker
    try:
        assert picker.button.layout.display == "none", "no image displayed: no button"
        assert ChatPanel(OblixClient(), namespace={}).image_picker.button.layout.display == "none", "no kernel: no button"
        memory.record(4, {"image/png": encoded(Image.new("RGB", (640, 480), "white"), "PNG")})
        memory.record(5, {"text/html": "<b>not an image</b>"})
        panel.refresh()
        assert (picker.button.description, picker.button.layout.display) == ("Image (1)", None)
        assert picker.gallery.children == () and picker.gallery.layout.display == "none", "nothing is drawn while the picker is shut"
        picker.button.value = True
        picker.wait()
        (tile,) = picker.gallery.children
        drawn = tile.children[0].value
        picker.button.value = False
        panel.refresh()
        picker.button.value = True
        picker.wait()
        assert picker.gallery.children == (tile,) and tile.children[0].value is drawn, "the tile and its thumbnail are kept"
        assert picker.chosen == [] and picker.chips.layout.display == "none", "nothing is chosen unasked"
        tile.children[-1].value = True
        (chip,) = picker.chips.children
        assert "oblix-tile-chosen" in tile._dom_classes and tile.children[-1].icon == "check"
        chip.click()
        assert picker.chosen == [] and not tile.children[-1].value and "oblix-tile-chosen" not in tile._dom_classes
    finally:
        panel.close()


def opened_picker(monkeypatch, figures: list, drawing) -> ChatPanel:
    """A panel whose kernel displayed ``figures`` (cell 1 first), its thumbnails drawn by ``drawing``, its picker opened."""
    from oblix_jupyter.frontends import image_picker

    memory = DisplayedImages()
    for cell, figure in enumerate(figures, start=1):
        memory.record(cell, {"image/png": encoded(figure, "PNG")})
    monkeypatch.setattr(image_picker, "thumbnail", drawing)
    panel = ChatPanel(OblixClient(), namespace={}, displayed=memory)
    panel.image_picker.button.value = True
    return panel


def test_opening_the_picker_shows_every_tile_at_once_and_draws_the_thumbnails_off_the_kernels_thread(model_env, monkeypatch):
    """Twenty large figures: the tiles come at once, holding their places; the pictures follow, drawn on the picker's thread."""
    looked, drawn_on = threading.Event(), []

    def drawing(image):  # the real thumbnail, once the test has looked at the tiles
        looked.wait(10)
        drawn_on.append(threading.current_thread().name)
        return thumbnail(image)

    figures = [Image.new("RGB", (2000, 1500)[:: -1 if cell == 20 else 1], (cell * 10, 80, 160)) for cell in range(1, 21)]  # the newest tall
    panel = opened_picker(monkeypatch, figures, drawing)
    picker = panel.image_picker
    try:
        tiles = picker.gallery.children
        assert [tile.children[-1].description for tile in tiles[:2]] == ["cell 20", "cell 19"], "newest first"
        assert len(tiles) == 20 and all("oblix-tile-pending" in tile.children[0]._dom_classes for tile in tiles)
        frames = [(tile.children[0].layout.width, tile.children[0].layout.height) for tile in tiles[:2]]
        assert frames == [("74px", "104px"), ("98px", "80px")], "each frame the size its picture will take (from the header)"
        tiles[-1].children[-1].value = True  # the kernel's thread takes a click while the pictures are drawn
        assert [image.label for image in picker.chosen] == ["figure from cell 1"]
        looked.set()
        picker.wait()
        assert len(drawn_on) == 20 and all(name.startswith("oblix-thumbnails") for name in drawn_on), drawn_on
        assert [type(part).__name__ for part in tiles[0].children] == ["Image", "ToggleButton"]
        assert [Image.open(io.BytesIO(tile.children[0].value)).size for tile in tiles[:2]] == [(72, 96), (96, 72)]
        assert picker.gallery.children == tiles and "oblix-tile-chosen" in tiles[-1]._dom_classes, "the same tiles, the choice kept"
    finally:
        looked.set()
        panel.close()


def test_closing_the_panel_while_thumbnails_are_drawn_stops_after_the_one_under_way(model_env, monkeypatch):
    started, closed, drawn = threading.Event(), threading.Event(), []

    def drawing(image):  # the real thumbnail, the first one held until the panel has closed
        started.set()
        closed.wait(10)
        drawn.append(image.label)
        return thumbnail(image)

    panel = opened_picker(monkeypatch, [Image.new("RGB", (1600, 1200), "white")] * 5, drawing)
    picker = panel.image_picker
    tiles = picker.gallery.children
    assert started.wait(10)
    panel.close()
    closed.set()
    picker.wait()
    assert drawn == ["figure from cell 5"], "the one under way finishes; no other is drawn"
    assert all("oblix-tile-pending" in tile.children[0]._dom_classes for tile in tiles), "nothing goes into a closed tile"


def test_an_image_sent_before_the_picker_drew_it_gets_its_thumbnail_in_its_tile_all_the_same(model_env, monkeypatch):
    """The prompt draws the chosen image's thumbnail first (``pending``): the picker's round must still put it in the tile."""
    held = threading.Event()

    def drawing(image):  # the real thumbnail, held on the picker's thread only
        if threading.current_thread().name.startswith("oblix-thumbnails"):
            held.wait(10)
        return thumbnail(image)

    panel = opened_picker(monkeypatch, [Image.new("RGB", (1600, 1200), "white")] * 2, drawing)
    picker = panel.image_picker
    try:
        newest, oldest = picker.gallery.children
        oldest.children[-1].value = True
        entries, _ = picker.pending(picker.chosen)  # sent while the picker's thread still draws the newest
        assert [entry["label"] for entry in entries] == ["figure from cell 1"]
        held.set()
        picker.wait()
        assert [[type(part).__name__ for part in tile.children] for tile in (newest, oldest)] == [["Image", "ToggleButton"]] * 2
    finally:
        held.set()
        panel.close()


def test_a_thumbnail_is_drawn_only_from_what_the_bytes_claim_to_be_and_never_from_svg_or_a_huge_image():
    white = Image.new("RGB", (400, 300), "white")
    jpeg = encoded(Image.new("CMYK", (400, 300), (0, 0, 0, 0)), "JPEG")
    drawn = thumbnail(NotebookImage("figure from cell 1", "image/jpeg", jpeg, 1, 400, 300))
    assert drawn is not None and Image.open(io.BytesIO(drawn)).format == "PNG" and Image.open(io.BytesIO(drawn)).size == (96, 72)
    # A GIF or an SVG posing as a PNG is not read by any other decoder; an SVG is never drawn at all.
    gif = encoded(white, "GIF")
    assert thumbnail(NotebookImage("figure from cell 2", "image/png", gif, 2, 400, 300)) is None
    assert thumbnail(NotebookImage("figure from cell 3", "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>", 3, 10, 10)) is None
    assert thumbnail(NotebookImage("figure from cell 4", "image/png", b"\x89PNG\r\n\x1a\n broken", 4, 400, 300)) is None
    # A small file can hold a vast plain picture: past the bound it is named, not decoded.
    vast = encoded(Image.new("L", (6000, 5000), 255), "PNG")
    assert len(vast) < 200_000 and thumbnail(NotebookImage("figure from cell 5", "image/png", vast, 5, 6000, 5000)) is None
    assert tile_name(NotebookImage("figure 2 from cell 5", "image/png", b"", 5)) == "cell 5 · 2"


def test_a_retry_whose_picture_cannot_be_read_asks_nothing_and_keeps_what_was_typed(model_env, monkeypatch):
    """The failed question's picture is in the store but cannot be read (here a directory stands where its file was)."""
    monkeypatch.setenv("OBLIX_VISION_MODELS", "openai/test-model")
    model_env.enqueue(Behavior(status=500))
    panel = ChatPanel(OblixClient(), namespace={})
    figure = NotebookImage("figure from cell 2", "image/png", encoded(Image.new("RGB", (64, 48), "navy"), "PNG"), 2, 64, 48)
    panel.textarea.value = "Why does it bend?"
    panel.send(images=[figure])
    panel.worker.join(30)
    (entry,) = panel.client.load_session(panel.session_id)["messages"][0]["attachments"]
    (kept,) = pathlib.Path(panel.client.session_manager.base_dir).parent.rglob(entry["id"])
    kept.unlink()
    kept.mkdir()
    panel.textarea.value = "a follow-up I am writing"
    asked = len(model_env.chat_requests())

    panel.retry()
    assert panel.textarea.value == "a follow-up I am writing" and not panel.busy
    assert "Oblix error" in panel.notice.value and entry["id"] in panel.notice.value, panel.notice.value
    assert len(model_env.chat_requests()) == asked, "nothing was asked without the picture"
    assert [m["role"] for m in panel.client.load_session(panel.session_id)["messages"]] == ["user", "assistant"]
