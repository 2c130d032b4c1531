"""The chat panel's image picker in real JupyterLab: a figure a cell displayed, picked, sent and shown, inertly.

A cell draws a matplotlib figure; the docked panel's "Image" button opens its thumbnail;
toggling it puts a chip above the prompt box; Enter sends it, and the question then shows
the thumbnail the session keeps. At a 250 px sidebar, at 700 px and in the dark theme the
picker stays inside the panel. Every picture the panel shows is an inline ``data:`` or a
widget's ``blob:`` image, nothing in the panel runs script (the model's answer tries), and
the page asks no other origin for anything. Screenshots go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from model_server import Behavior
from test_panel_layout import LOAD, PANEL, set_sidebar_width, set_theme

pytestmark = pytest.mark.timeout(300)
SEES = "import os\nos.environ['OBLIX_VISION_MODELS'] = 'openai/test-model'  # as a user declares a self-hosted vision endpoint"
PLOT = """import matplotlib.pyplot as plt
plt.figure(figsize=(8, 6), dpi=100)
plt.plot([2015, 2017, 2019, 2021], [1, 3, 9, 4]);"""
HOSTILE_ANSWER = (
    "It bends because of the 2019 spike. <script>window.oblixRan = 'script'</script>"
    "<img src=x onerror=\"window.oblixRan = 'onerror'\"> ![chart](http://127.0.0.1:9/steal.png)"
)
# Every picture in the panel, where it comes from and how big it is drawn.
PICTURES = """(chat) => [...chat.querySelectorAll('img')].map((img) => {
    const box = img.getBoundingClientRect();
    return {src: img.getAttribute('src').slice(0, 22), x: box.x, width: box.width, height: box.height, natural: img.naturalWidth};
})"""


def within(inner: dict[str, float], outer: dict[str, float], where: str) -> None:
    assert inner["width"] > 0 and inner["height"] > 0, f"{where}: shown; {inner}"
    assert outer["x"] - 0.5 <= inner["x"] and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5, f"{where}: {inner} in {outer}"


def image_parts(request: dict[str, Any]) -> int:
    content = request["messages"][-1]["content"]
    return sum(part.get("type") == "image_url" for part in content) if isinstance(content, list) else 0


def test_a_figure_is_picked_sent_and_shown_as_thumbnails_that_stay_in_the_panel_and_inert(jlab, server):
    server.default = Behavior(reply=HOSTILE_ANSWER)
    origin = urlsplit(jlab.lab.url)
    elsewhere: list[str] = []
    jlab.page.on("request", lambda request: elsewhere.append(request.url) if urlsplit(request.url).netloc not in ("", origin.netloc) else None)
    jlab.lab.write_notebook("pictures/figures.ipynb", [LOAD, SEES, PLOT])
    jlab.open_notebook("pictures/figures.ipynb")
    for cell in range(3):
        jlab.run_cell(cell)
    jlab.output_locator(2).locator("img").wait_for()
    chat = jlab.chat_from_toolbar()
    chat.wait_for()
    set_sidebar_width(jlab, 250)

    button = chat.locator(".oblix-image-button")
    button.wait_for()
    assert button.inner_text().strip() == "Image (1)", "the button counts the figure the cell displayed"
    assert chat.locator(".oblix-tile").count() == 0, "no thumbnail before the picker opens"
    button.click()
    tile = chat.locator(".oblix-tile")
    tile.locator("img").wait_for()
    panel = chat.bounding_box()
    picture = tile.locator("img").bounding_box()
    within(picture, panel, "the thumbnail at 250 px")
    assert 60 <= picture["width"] <= 100.5 and picture["height"] <= 100.5, f"a small thumbnail: {picture}"
    assert tile.locator("img").evaluate("(img) => img.complete && img.naturalWidth === 96"), "a 96 px thumbnail, decoded"
    assert tile.locator("button").inner_text().strip() == "cell 3"
    jlab.screenshot("picker-open-250px")

    tile.locator("button").click()
    chip = chat.locator(".oblix-chip")
    chip.wait_for()
    assert chip.inner_text().strip() == "figure from cell 3 ×"
    assert tile.evaluate("(el) => el.classList.contains('oblix-tile-chosen')"), "the chosen thumbnail is marked"
    within(chip.bounding_box(), panel, "the chip at 250 px")
    jlab.screenshot("picker-chosen-250px")

    textarea = chat.locator(".oblix-input textarea")
    textarea.fill("Why does this curve bend at 2019?")
    textarea.press("Enter")
    chat.locator(".oblix-assistant", has_text="It bends because").wait_for()
    chat.locator("button.oblix-send:not([disabled])").wait_for()
    question = chat.locator(".oblix-user").last
    shown = question.locator(".oblix-thumb img")
    shown.wait_for()
    kept = shown.evaluate("(img) => img.complete ? img.naturalWidth : 0")
    assert kept > 400, f"the question shows the figure the session keeps (the plot, {kept} px wide), not the picker's thumbnail"
    within(shown.bounding_box(), question.bounding_box(), "the question's thumbnail at 250 px")
    assert chat.locator(".oblix-chip").count() == 0 and not tile.is_visible(), "the choice cleared, the picker closed, on send"
    assert image_parts(server.chat_requests()[-1]) == 1, "the model was sent the one figure chosen"
    jlab.screenshot("picker-sent-250px")

    set_sidebar_width(jlab, 700)
    button.click()
    tile.locator("img").wait_for()
    within(tile.locator("img").bounding_box(), chat.bounding_box(), "the thumbnail at 700 px")
    jlab.screenshot("picker-open-700px")
    set_theme(jlab, "JupyterLab Dark")
    try:
        tile.locator("button").click()
        chip.wait_for()
        within(chip.bounding_box(), chat.bounding_box(), "the chip in the dark theme")
        jlab.screenshot("picker-chosen-dark")
    finally:
        set_theme(jlab, "JupyterLab Light")

    pictures = chat.evaluate(PICTURES)
    assert len(pictures) >= 2 and all(p["src"].startswith(("data:image/png;", "data:image/jpeg;", "blob:")) for p in pictures), pictures
    assert chat.locator("script").count() == 0 and jlab.page.evaluate("() => window.oblixRan") is None, "the answer's markup ran nothing"
    assert "<script>" in chat.locator(".oblix-assistant").last.inner_text(), "the answer's markup shows as text"
    assert elsewhere == [], f"the page asked another origin: {elsewhere}"
