"""GGUF files for the local-model tests: copies of the bundled SmolLM2 file, one without its chat template."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from oblix_jupyter.models import local_model

TEMPLATE_KEY = b"tokenizer.chat_template"


def bundled_copy(destination: Path) -> Path:
    """The bundled model's file copied to ``destination``: another file, with the same metadata."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local_model.gguf_path(), destination)
    return destination


def without_chat_template(destination: Path) -> Path:
    """A copy whose metadata no longer has ``tokenizer.chat_template``.

    The key is renamed to one of the same length that nothing reads, so every offset in
    the file stays valid: to a reader it is a GGUF file that carries no chat template.
    """
    data = bytearray(local_model.gguf_path().read_bytes())
    key = struct.pack("<Q", len(TEMPLATE_KEY)) + TEMPLATE_KEY
    at = data.index(key)
    assert data.find(key, at + 1) == -1
    data[at + 8 : at + 8 + len(TEMPLATE_KEY)] = b"x-removed.chat_template"
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(bytes(data))
    return destination
