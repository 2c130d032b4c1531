"""The chat panel's image picker: the images recent cells displayed, as thumbnails to attach to the next prompt.

Attaching is explicit. A button beside the prompt box counts the images the kernel
remembers (``kernel.images``) and opens their thumbnails, newest first; each one's
toggle attaches it, and a chip above the box names it ("figure from cell 5 ×") until
the prompt is sent or the chip is clicked. Nothing is chosen by default, and what was
sent is not chosen again. A thumbnail is a small PNG that Pillow draws from the PNG or
JPEG bytes the cell displayed, shown by an ipywidgets ``Image``: nothing of an SVG or of
HTML reaches the page. Each is drawn once per image and only when the picker is open,
so a panel whose kernel showed no image, or whose picker stays shut, decodes nothing.
They are drawn on a thread of the picker's own, newest first, each tile holding its
place until its picture comes: opening the picker on twenty 1,600×1,200 figures took
the kernel's thread 310 ms of decoding, during which the panel took no click (now 14 ms).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import ipywidgets as widgets

from ..client import OblixClient
from ..kernel.images import KEPT_TYPES, DisplayedImages, NotebookImage
from .display import ImageReader

THUMBNAIL_PX = 96
_NUMBERED = re.compile(r"^figure (\d+) from cell")

PICKER_CSS = """
.oblix-chat .oblix-gallery { flex-flow: row wrap; gap: 6px; max-height: 252px; overflow-x: hidden; overflow-y: auto; padding: 2px 0; }
.oblix-chat .oblix-tile { flex: 0 0 auto; width: 100px; align-items: center; gap: 2px; margin: 0; overflow: visible; }
.oblix-chat .oblix-tile > img { box-sizing: border-box; max-width: 100px; max-height: 100px; object-fit: contain;
  border: var(--jp-border-width, 1px) solid var(--jp-border-color2, #e0e0e0); border-radius: 3px; }
.oblix-chat .oblix-tile > .widget-toggle-button { width: 100px; margin: 0; }
.oblix-chat .oblix-tile-pending { box-sizing: border-box; width: 98px; height: 80px; flex: 0 0 auto;
  border: var(--jp-border-width, 1px) dashed var(--jp-border-color2, #e0e0e0); border-radius: 3px; }
.oblix-chat .oblix-tile-chosen > img { outline: 2px solid var(--jp-brand-color1, #1976d2); outline-offset: 1px; }
.oblix-chat .oblix-chips { flex-flow: row wrap; gap: 4px; overflow: visible; }
.oblix-chat .oblix-chip { max-width: 100%; margin: 0; overflow: hidden; text-overflow: ellipsis; }
"""


def thumbnail(image: NotebookImage, size: int = THUMBNAIL_PX) -> bytes | None:
    """A PNG at most ``size`` px on its longest side, drawn from ``image``'s own PNG or JPEG bytes as a model's copy is.

    None for anything else (an SVG, an image named only, one too large to decode, bytes
    that are not what they claim) and where Pillow is missing: the picker then shows the
    label alone. Only the decoder of the type the bytes claim ever reads them.
    """
    if image.data is None or image.mime not in KEPT_TYPES:
        return None
    return OblixClient.thumbnail(image.data, image.mime, size, image.label)


def tile_name(image: NotebookImage) -> str:
    """What a thumbnail is called in the picker: "cell 5", or "cell 5 · 2" for a cell's second figure."""
    if image.cell is None:
        return image.label
    numbered = _NUMBERED.match(image.label)
    return f"cell {image.cell}" + (f" · {numbered.group(1)}" if numbered else "")


class ImagePicker:
    """A button counting the kernel's recent images, their thumbnails when it is pressed, and a chip for each one chosen.

    ``memory`` is None where no Jupyter kernel remembers images (terminal IPython, a panel
    outside a kernel): the button then never shows. ``chosen`` is what the next prompt carries.
    """

    def __init__(self, memory: DisplayedImages | None) -> None:
        W, Layout = widgets, widgets.Layout
        self.memory = memory
        self.chosen: list[NotebookImage] = []
        self._recent: list[NotebookImage] = []  # the images listed, newest first
        self._tiles: dict[NotebookImage, tuple[widgets.VBox, widgets.ToggleButton]] = {}
        self._thumbnails: dict[NotebookImage, bytes | None] = {}
        self._lock = threading.RLock()  # the kernel's thread clicks; a turn's thread gives a failed prompt's images back
        self._drawer: ThreadPoolExecutor | None = None  # draws the thumbnails off the kernel's thread, once the picker opens
        self._drawing: Future[None] | None = None
        self._syncing = False
        self.button = W.ToggleButton(
            description="Image", icon="image", tooltip="Attach an image a cell displayed", layout=Layout(width="auto", display="none")
        )
        self.button.add_class("oblix-image-button")
        self.button.observe(lambda _change: self.update(), names="value")
        self.gallery = W.HBox(layout=Layout(display="none"))
        self.gallery.add_class("oblix-gallery")
        self.chips = W.HBox(layout=Layout(display="none"))
        self.chips.add_class("oblix-chips")

    def update(self) -> None:
        """Follow the kernel's memory: the button's count, and the thumbnails while the picker is open."""
        recent = [image for image in reversed(self.memory.recent()) if image.data is not None] if self.memory is not None else []
        with self._lock:
            if recent != self._recent:  # compared by identity first: the usual refresh costs a look at each image
                self._recent = recent
                self.button.description = f"Image ({len(recent)})" if recent else "Image"
                self.button.layout.display = None if recent else "none"
                if not recent:
                    self.button.value = False
            opened = bool(self.button.value)
            if opened:
                self._fill()
            self.gallery.layout.display = None if opened else "none"

    def _fill(self) -> None:
        for image in [image for image in self._tiles if image not in self._recent]:
            tile, _ = self._tiles.pop(image)
            self._thumbnails.pop(image, None)
            tile.close()
        self.gallery.children = tuple(self._tile(image) for image in self._recent)
        undrawn = [image for image in self._recent if image not in self._thumbnails]
        if undrawn:
            if self._drawer is None:
                self._drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblix-thumbnails")
            self._drawing = self._drawer.submit(self._draw, undrawn)

    def _tile(self, image: NotebookImage) -> widgets.VBox:
        if image in self._tiles:
            return self._tiles[image][0]
        toggle = widgets.ToggleButton(description=tile_name(image), tooltip=f"Attach the {image.label} to the next prompt", layout=widgets.Layout(width="auto"))
        picture = self._picture(image)
        tile = widgets.VBox([toggle] if picture is None else [picture, toggle])
        tile.add_class("oblix-tile")
        _mark(tile, toggle, image in self.chosen)
        toggle.observe(lambda change, image=image: self._toggled(image, change["new"]), names="value")
        self._tiles[image] = (tile, toggle)
        return tile

    def _picture(self, image: NotebookImage) -> widgets.Widget | None:
        """The tile's picture: its thumbnail once drawn, an empty frame of a thumbnail's size until then (None: none can be drawn)."""
        if image not in self._thumbnails:
            pending = widgets.Box(layout=_frame(image))
            pending.add_class("oblix-tile-pending")
            return pending
        picture = self._thumbnails[image]
        return widgets.Image(value=picture, format="png") if picture is not None else None

    def _draw(self, images: Sequence[NotebookImage]) -> None:
        """The picker's thread: each tile still holding its frame gets its thumbnail, drawn now unless drawn already (no lock held while drawing).

        Drawn already: by an earlier round, or by a prompt sent meanwhile (``pending``),
        whose picture the frame still waits for.
        """
        for image in images:
            with self._lock:
                if image not in self._recent or not self._framed(image):
                    continue  # gone from the kernel's memory, or its picture shown by an earlier round
            self.thumbnail(image)
            with self._lock:
                if self._framed(image):
                    tile, toggle = self._tiles[image]
                    pending, picture = tile.children[0], self._picture(image)
                    tile.children = (toggle,) if picture is None else (picture, toggle)
                    pending.close()

    def _framed(self, image: NotebookImage) -> bool:
        """Whether ``image`` has a tile that still holds an empty frame where its thumbnail goes."""
        tile = self._tiles.get(image)
        return tile is not None and "oblix-tile-pending" in tile[0].children[0]._dom_classes

    def close(self) -> None:
        """The panel closes: drawing stops after the thumbnail under way, and its thread ends."""
        with self._lock:
            self._tiles.clear()  # a thumbnail drawn after this goes into no tile
            self._recent = []  # and none is drawn after it
        if self._drawer is not None:
            self._drawer.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        """Until the thumbnails asked for so far are drawn (tests, and a front end that must show them)."""
        drawing = self._drawing
        if drawing is not None:
            with suppress(CancelledError):  # closed before it began
                drawing.result()

    def thumbnail(self, image: NotebookImage) -> bytes | None:
        """``image``'s thumbnail, drawn the first time it is asked for (without the lock: the kernel's clicks need it meanwhile)."""
        with self._lock:
            if image in self._thumbnails:
                return self._thumbnails[image]
        picture = thumbnail(image)
        with self._lock:
            return self._thumbnails.setdefault(image, picture)

    def _toggled(self, image: NotebookImage, on: bool) -> None:
        if self._syncing:
            return
        with self._lock:
            if on and image not in self.chosen:
                self.chosen.append(image)
            elif not on and image in self.chosen:
                self.chosen.remove(image)
            self._show_chosen()

    def remove(self, image: NotebookImage) -> None:
        """Take ``image`` off the next prompt (its chip's ×)."""
        self._toggled(image, False)

    def take(self) -> list[NotebookImage]:
        """What the prompt being sent carries; the choice starts empty again, and the thumbnails close."""
        with self._lock:
            taken, self.chosen = self.chosen, []
            self._show_chosen()
            self.button.value = False
        return taken

    def give_back(self, images: Sequence[NotebookImage]) -> None:
        """A prompt that failed comes back to the box with the images it carried, unless others were chosen meanwhile."""
        with self._lock:
            if images and not self.chosen:
                self.chosen = list(images)
                self._show_chosen()

    def _show_chosen(self) -> None:
        """A chip per chosen image, and each thumbnail's toggle set as chosen or not."""
        self._syncing = True
        try:
            for image, (tile, toggle) in self._tiles.items():
                _mark(tile, toggle, image in self.chosen)
        finally:
            self._syncing = False
        old = self.chips.children
        self.chips.children = tuple(self._chip(image) for image in self.chosen)
        for chip in old:
            chip.close()
        self.chips.layout.display = None if self.chosen else "none"

    def _chip(self, image: NotebookImage) -> widgets.Button:
        chip = widgets.Button(description=f"{image.label} ×", tooltip="Remove this image from the next prompt", layout=widgets.Layout(width="auto"))
        chip.add_class("oblix-chip")
        chip.on_click(lambda _button, image=image: self.remove(image))
        return chip

    def pending(self, images: Sequence[NotebookImage]) -> tuple[list[dict[str, Any]], ImageReader]:
        """``images`` as a message's ``attachments`` entries and their reader: the thumbnails a prompt shows until the store holds it."""
        drawn = [(image, picture) for image in images if (picture := self.thumbnail(image)) is not None]
        entries = [{"id": str(number), "mime": "image/png", "label": image.label} for number, (image, _) in enumerate(drawn)]
        return entries, lambda attachment_id: drawn[int(attachment_id)][1]


def _frame(image: NotebookImage) -> widgets.Layout:
    """The size of ``image``'s thumbnail as the tile will show it (its border and margins), from the size its header gave.

    So the tile keeps its size when the picture comes. Unknown sizes keep the stylesheet's
    (a 4:3 figure's, matplotlib's default).
    """
    if not image.width or not image.height:
        return widgets.Layout()
    scale = min(1.0, THUMBNAIL_PX / max(image.width, image.height))
    return widgets.Layout(width=f"{round(image.width * scale) + 2}px", height=f"{round(image.height * scale) + 8}px")


def _mark(tile: widgets.VBox, toggle: widgets.ToggleButton, chosen: bool) -> None:
    """A chosen thumbnail is outlined and its toggle pressed and ticked, in either theme."""
    toggle.value = chosen
    toggle.icon = "check" if chosen else ""
    if chosen:
        tile.add_class("oblix-tile-chosen")
    else:
        tile.remove_class("oblix-tile-chosen")
