"""What a GGUF model file says about itself: its name, context length and chat template.

Only the metadata at the head of the file is read (through ``mmap``, so a 2 GB file
costs what its few megabytes of metadata cost), with no dependency: the format is a
count of key/value pairs, each a length-prefixed key, a type tag and a value
(https://github.com/ggml-org/ggml/blob/master/docs/gguf.md). Arrays are skipped, except
that a token's text can be looked up by its id, for the template's ``bos_token``.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class NotAGGUF(ValueError):
    """The file is not a GGUF model file this reader understands; the message says why, in a few words."""


@dataclass(frozen=True)
class GGUFInfo:
    """The metadata a chat needs. ``chat_template`` is None when the file carries none."""

    architecture: str
    name: str | None
    context_length: int | None
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos_token: bool


def read_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """The chat-relevant metadata of the GGUF file at ``path``; raises ``NotAGGUF`` or ``OSError``."""
    with open(path, "rb") as handle:
        try:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise NotAGGUF("empty file") from None
    with view:
        try:
            values, token_list = _read_metadata(view)
        except (struct.error, IndexError, UnicodeDecodeError) as error:
            raise NotAGGUF(f"truncated or damaged metadata ({type(error).__name__})") from None

        def token(key: str) -> str:
            token_id = values.get(key)
            if not isinstance(token_id, int) or token_list is None:
                return ""
            return _array_string(view, *token_list, token_id)

        architecture = str(values.get("general.architecture") or "")
        context = values.get(f"{architecture}.context_length")
        template = values.get("tokenizer.chat_template")
        return GGUFInfo(
            architecture=architecture,
            name=str(values["general.name"]) if values.get("general.name") else None,
            context_length=int(context) if isinstance(context, int) and context > 0 else None,
            chat_template=template if isinstance(template, str) and template.strip() else None,
            bos_token=token("tokenizer.ggml.bos_token_id"),
            eos_token=token("tokenizer.ggml.eos_token_id"),
            add_bos_token=bool(values.get("tokenizer.ggml.add_bos_token", False)),
        )


def _read_metadata(view: mmap.mmap) -> tuple[dict[str, object], tuple[int, int] | None]:
    """The scalar and string values by key, and where the token strings are (offset, count)."""
    if view[:4] != _MAGIC:
        raise NotAGGUF("it does not start with the GGUF signature")
    (version,) = struct.unpack_from("<I", view, 4)
    if version not in (2, 3):
        raise NotAGGUF(f"GGUF version {version} (or a big-endian file); versions 2 and 3 are read")
    (kv_count,) = struct.unpack_from("<Q", view, 16)
    offset = 24
    values: dict[str, object] = {}
    tokens: tuple[int, int] | None = None
    for _ in range(kv_count):
        key, offset = _string(view, offset)
        (kind,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if kind == _ARRAY:
            item_kind, count = struct.unpack_from("<IQ", view, offset)
            offset += 12
            if key == "tokenizer.ggml.tokens" and item_kind == _STRING:
                tokens = (offset, count)
            offset = _skip_array(view, offset, item_kind, count)
        else:
            values[key], offset = _value(view, offset, kind)
    return values, tokens


def _string(view: mmap.mmap, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", view, offset)
    end = offset + 8 + length
    if end > len(view):
        raise IndexError("string past the end of the file")
    return view[offset + 8 : end].decode("utf-8"), end


def _value(view: mmap.mmap, offset: int, kind: int) -> tuple[object, int]:
    if kind == _STRING:
        return _string(view, offset)
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise NotAGGUF(f"unknown value type {kind}")
    return struct.unpack_from(fmt, view, offset)[0], offset + struct.calcsize(fmt)


def _skip_array(view: mmap.mmap, offset: int, kind: int, count: int) -> int:
    if kind == _STRING:
        for _ in range(count):
            (length,) = struct.unpack_from("<Q", view, offset)
            offset += 8 + length
        return offset
    if kind == _ARRAY:
        raise NotAGGUF("nested arrays are not read")
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise NotAGGUF(f"unknown array type {kind}")
    return offset + struct.calcsize(fmt) * count


def _array_string(view: mmap.mmap, offset: int, count: int, index: int) -> str:
    """The ``index``-th string of an array of ``count`` strings starting at ``offset`` ("" when out of range)."""
    if not 0 <= index < count:
        return ""
    for _ in range(index):
        (length,) = struct.unpack_from("<Q", view, offset)
        offset += 8 + length
    return _string(view, offset)[0]
