"""The images a user attached to a turn: parts for a model that can see, a line of text for one that cannot, and what the prompt keeps.

Attaching is explicit (``%%oblix --image N``, a figure named in the prompt, the chat
panel's picker): nothing here looks for images. Each one is prepared once
(``models.images.prepare``: shrunk to ``max_px``, the smaller encoding), so what the
model is sent, what the session keeps and its thumbnails are the same bytes. A model
that cannot see gets "[a 640×480 figure from cell 5: this model cannot see images]"
instead, and the turn says so under the answer. The stored prompt records each image
(id, type, size, label) and the store keeps the bytes; later turns never send an old
image again, only "[image sent earlier: figure from cell 5]" in its place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models.images import DEFAULT_MAX_PX, can_see, cannot_see_note, prepare

if TYPE_CHECKING:
    from .kernel.images import NotebookImage


@dataclass
class Attached:
    """A turn's images as its model will have them.

    ``parts`` are the content parts sent after the prompt's text (empty when the model
    cannot see); ``notes`` the lines sent in their place or about images that could not
    be kept; ``tokens`` what the parts cost against the input budget; ``stored`` each
    image's entry for the prompt's ``attachments`` field with the bytes the store keeps
    for it (its ``id`` is set when saved); ``labels`` (label, how it went) for the turn's
    record and its notice.
    """

    parts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tokens: int = 0
    stored: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    labels: list[tuple[str, str]] = field(default_factory=list)

    def with_notes(self, text: str) -> str:
        """The prompt's text as the selector counts it and the model reads it: followed by the notes, if any."""
        return "\n\n".join([text, *self.notes]) if self.notes else text

    def content(self, text: str) -> str | list[dict[str, Any]]:
        """The prompt's content as sent: its text followed by the image parts, when there are some."""
        return [{"type": "text", "text": text}, *self.parts] if self.parts else text

    def notice(self, model: str) -> str | None:
        """What the user must read under the answer about images that did not reach the model, if any."""
        unsent = [f"{label} ({how})" for label, how in self.labels if how != "sent"]
        return f"not sent to {model}: " + ", ".join(unsent) if unsent else None


def attach(images: Sequence[NotebookImage], model: str, model_options: Mapping[str, Any] | None = None, max_px: int = DEFAULT_MAX_PX) -> Attached:
    """Prepare ``images`` for ``model``: parts and their tokens if it can see, notes if not; every kept image to be stored."""
    attached = Attached()
    seeing = bool(images) and can_see(model, dict(model_options) if model_options else None)
    for image in images:
        drawn = image.raster()  # a kept SVG is drawn now, by the rasteriser that made the kernel keep it
        if drawn is None or drawn.data is None:  # named only: an SVG with no rasteriser, or larger than the kernel keeps
            attached.notes.append(f"[{image.label}: not sent, {image.withheld or 'not kept'}]")
            attached.labels.append((image.label, image.withheld or "not kept"))
            continue
        ready = prepare(drawn.data, drawn.mime, max_px, model=model, label=image.label)
        entry = {"mime": ready.mime, "width": ready.width, "height": ready.height, "label": image.label, "bytes": len(ready.data)}
        attached.stored.append((entry, ready.data))
        if seeing:
            attached.parts.append(ready.content_part())
            attached.tokens += ready.tokens
            attached.labels.append((image.label, "sent"))
        else:
            attached.notes.append(cannot_see_note(image.label, ready.width, ready.height))
            attached.labels.append((image.label, "this model cannot see images"))
    return attached


def earlier_images_named(messages: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """``messages`` with each earlier image named in its message's text instead of sent again: "[image sent earlier: …]".

    Returns ``messages`` itself when no message carries one: the usual session costs a
    look at each message and no copy.
    """
    if not any("attachments" in message for message in messages):
        return messages
    named = []
    for message in messages:
        entries = message.get("attachments")
        if isinstance(entries, list) and entries:
            labels = [str(entry.get("label") or "an image") for entry in entries if isinstance(entry, Mapping)]
            lines = "\n".join(f"[image sent earlier: {label}]" for label in labels)
            message = {**message, "content": f"{message.get('content', '')}\n\n{lines}"}
        named.append(message)
    return named
