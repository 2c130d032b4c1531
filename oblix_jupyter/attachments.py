"""The images of a turn: parts for a model that can see, a line of text for one that cannot, and what the prompt keeps.

Attaching is explicit (``%%oblix --image N``, a figure named in the prompt, the chat
panel's picker): nothing here looks for images. Each one is prepared once
(``models.images.prepare``: shrunk to ``max_px``, the smaller encoding), so what the
model is sent, what the session keeps and its thumbnails are the same bytes. When some
model of the turn's chain can see, the prompt carries the image as a content part with
its note beside it ("[a 640×480 figure from cell 5: this model cannot see images]"),
and the gateway gives each model what it can take (``supports_vision``): the image, or the note; the turn
says under the answer when its model got the note. The stored prompt records each image
(id, type, size, label) and the store keeps the bytes; later turns never send an old
image again: the selector names it, "[image sent earlier: figure from cell 5]". A model that
can see may also ask for a cell's images through the kernel's ``cell_images`` tool
(``tool_images`` prepares them the same way).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import AttachmentNotFound, UnreadableImage
from .models.gateway import image_part, images_as_text, supports_vision
from .models.images import DEFAULT_MAX_PX, PreparedImage, cannot_see_note, prepare

if TYPE_CHECKING:
    from .kernel.images import NotebookImage

CANNOT_SEE = "this model cannot see images"
ASKED_FOR = "sent: the model asked for it"


@dataclass
class Attached:
    """A turn's images as its model will have them.

    ``parts`` are the content parts sent after the prompt's text (empty when no model of
    the chain can see), each carrying its note for a model that cannot; ``notes`` the
    lines sent in the text instead, or about images that could not be kept; ``tokens``
    what the parts cost against the input budget; ``stored`` each image's entry for the
    prompt's ``attachments`` field with the bytes the store keeps for it (its ``id`` is
    set when saved); ``labels`` (label, why it is not sent, None when it is a part).
    """

    parts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tokens: int = 0
    stored: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    labels: list[tuple[str, str | None]] = field(default_factory=list)

    def with_notes(self, text: str) -> str:
        """The prompt's text as the selector counts it and the model reads it: followed by the notes, if any."""
        return "\n\n".join([text, *self.notes]) if self.notes else text

    def content(self, text: str) -> str | list[dict[str, Any]]:
        """The prompt's content as sent: its text followed by the image parts, when there are some."""
        return [{"type": "text", "text": text}, *self.parts] if self.parts else text

    def outcome(self, sees: bool, tool_calls: Sequence[Mapping[str, Any]] = ()) -> list[tuple[str, str]]:
        """(label, how it went) for each image of the answer: those attached, then those its tool calls showed.

        ``sees``: the answering model was sent the parts, or else read their notes (the gateway's ``Completion.sees``).
        """
        attached = [(label, why or ("sent" if sees else CANNOT_SEE)) for label, why in self.labels]
        shown = [(str(label), ASKED_FOR) for call in tool_calls for label in call.get("images") or ()]
        return attached + shown

    def notice(self, model: str, sees: bool) -> str | None:
        """What the user must read under the answer about images that did not reach ``model``, the one that answered, if any."""
        unsent = [f"{label} ({how})" for label, how in self.outcome(sees) if how != "sent"]
        return f"not sent to {model}: " + ", ".join(unsent) if unsent else None


def sight(model_options: Mapping[str, Mapping[str, Any]]) -> Callable[[str], bool]:
    """Whether a model is sent images (the gateway's ``supports_vision``, with its own options), asked at most once a model for the turn."""

    @functools.cache
    def sees(model: str) -> bool:
        options = model_options.get(model)
        return supports_vision(model, dict(options) if options else None)

    return sees


def attach(images: Sequence[NotebookImage], models: Sequence[str], sees: Callable[[str], bool], max_px: int = DEFAULT_MAX_PX) -> Attached:
    """Prepare ``images`` for the turn's chain ``models``: parts and their tokens if one of them can see, notes if none; every kept image to be stored.

    Which model sees is asked only when there are images.
    """
    attached = Attached()
    seer = next((model for model in models if sees(model)), None) if images else None
    for image in images:
        ready = _prepared(image, seer or models[0], max_px)
        if ready is None:  # named only: an SVG with no rasteriser, or larger than the kernel keeps
            attached.notes.append(f"[{image.label}: not sent, {image.withheld or 'not kept'}]")
            attached.labels.append((image.label, image.withheld or "not kept"))
            continue
        entry = {"mime": ready.mime, "width": ready.width, "height": ready.height, "label": image.label, "bytes": len(ready.data)}
        attached.stored.append((entry, ready.data))
        note = cannot_see_note(image.label, ready.width, ready.height)
        if seer is not None:
            attached.parts.append(image_part(ready.content_part(), image.label, note))
            attached.tokens += ready.tokens
            attached.labels.append((image.label, None))
        else:
            attached.notes.append(note)
            attached.labels.append((image.label, CANNOT_SEE))
    return attached


def stored_images(message: Mapping[str, Any], read: Callable[[str], bytes]) -> list[NotebookImage]:
    """The images a stored prompt carried, as the session keeps them (what its model was sent): a retry sends them again.

    The entries come from a session file: only PNG and JPEG bytes are read (``read`` takes
    an attachment id), and the pixel size comes from the bytes, never from the entry; any
    other entry, or one whose bytes are gone, is named only, as ``--image`` names what it
    cannot send. A store that cannot be read now (``StoreUnavailable``) raises: a retry
    without the picture would ask another question than the one that failed.
    """
    from .kernel.images import KEPT_TYPES, NotebookImage, pixel_size

    images = []
    for entry in message.get("attachments") or []:
        if not isinstance(entry, Mapping):
            continue
        mime, data = str(entry.get("mime")), None
        if mime in KEPT_TYPES:
            try:
                data = read(str(entry.get("id")))
            except AttachmentNotFound:
                pass
        width, height = (pixel_size(data, mime) if data else None) or (None, None)
        label = str(entry.get("label") or "image")
        images.append(NotebookImage(label, mime, data, width=width, height=height, withheld=None if data else "no longer kept"))
    return images


def tool_images(model: str, max_px: int = DEFAULT_MAX_PX) -> Callable[[NotebookImage], tuple[dict[str, Any], int]]:
    """How the kernel's ``cell_images`` tool shows an image to ``model`` (one that can see): its content part and its tokens."""

    def show(image: NotebookImage) -> tuple[dict[str, Any], int]:
        ready = _prepared(image, model, max_px)
        if ready is None:
            raise UnreadableImage(f"{image.label}: not kept ({image.withheld or 'its bytes are gone'}).")
        return image_part(ready.content_part(), image.label, cannot_see_note(image.label, ready.width, ready.height)), ready.tokens

    return show


def _prepared(image: NotebookImage, model: str, max_px: int) -> PreparedImage | None:
    """``image`` ready to send to ``model``; None when only its name is kept."""
    drawn = image.raster()  # a kept SVG is drawn now, by the rasteriser that made the kernel keep it
    if drawn is None or drawn.data is None:
        return None
    return prepare(drawn.data, drawn.mime, max_px, model=model, label=image.label)


def images_named(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each image part named instead of carried ("[image: figure from cell 5]"): what ``--explain`` lists."""
    return images_as_text(messages, lambda about: f"[image: {about.get('label') or 'an image'}]")
