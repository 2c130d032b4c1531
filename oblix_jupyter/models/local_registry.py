"""The user's own GGUF files, by name, and how fast each was measured to read and write: one private JSON file.

``$OBLIX_HOME/local_models.json`` (default ``~/.oblix``), 0600 in a 0700 folder, since the
paths it lists say what the user keeps on disk. ``local/NAME`` then names the file as a
model everywhere a model string is taken. Nothing here loads a model or reads more than
a file's metadata.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import BadArguments, OblixError
from .gguf_file import NotAGGUF, read_info

FILE_NAME = "local_models.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = 1


class RegistryUnreadable(OblixError):
    """The registry file exists but is not the JSON this code writes; it is left as it is."""


def oblix_home() -> Path:
    """The folder oblix keeps its files in (the store's own sessions folder is under it too)."""
    return Path(os.environ.get("OBLIX_HOME") or Path.home() / ".oblix")


def registry_path() -> Path:
    return oblix_home() / FILE_NAME


def name_for(path: str | os.PathLike[str]) -> str:
    """A model name from a file name: ``Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf`` gives ``qwen2.5-coder-0.5b-instruct-q4_k_m``."""
    stem = Path(path).name.removesuffix(".gguf").lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:64] or "model"


def registered() -> dict[str, Path]:
    """The registered names and their files (which may have disappeared since)."""
    return {name: Path(entry["path"]) for name, entry in _read()["models"].items()}


def add(path: str | os.PathLike[str], name: str | None = None, reserved: tuple[str, ...] = ()) -> tuple[str, Path]:
    """Register the GGUF file at ``path`` as ``local/NAME``; returns (name, absolute path).

    The file must exist and read as GGUF. Adding the same file under the same name again
    is harmless; a name already given to another file, or one of ``reserved``, is refused.
    """
    file = Path(path).expanduser().resolve()
    name = (name or name_for(file)).strip().lower()
    if not _NAME.match(name):
        raise BadArguments(f"{name!r} cannot be a model name: use letters, digits, '.', '_' or '-' (at most 64).")
    if name in reserved:
        raise BadArguments(f"local/{name} is the bundled model's name; pick another with --name.")
    if not file.is_file():
        raise BadArguments(f"{file} is not a file.")
    try:
        read_info(file)
    except NotAGGUF as error:
        raise BadArguments(f"{file} is not a GGUF model file ({error}).") from None
    except OSError as error:
        raise BadArguments(f"{file} cannot be read ({error.strerror or error}).") from None
    data = _read()
    known = data["models"].get(name)
    if known is not None and Path(known["path"]) != file:
        raise BadArguments(f"local/{name} is already {known['path']}; remove it first or pick another --name.")
    if known is None:
        data["models"][name] = {"path": str(file)}
        data["speeds"].pop(name, None)  # measured on another file, if ever
        _write(data)
    return name, file


def remove(name: str) -> Path:
    """Forget ``local/NAME`` (the file itself is left alone); returns the file it named."""
    name = name.removeprefix("local/")
    data = _read()
    entry = data["models"].pop(name, None)
    if entry is None:
        raise BadArguments(f"local/{name} is not registered; `oblix local list` shows those that are.")
    data["speeds"].pop(name, None)
    _write(data)
    return Path(entry["path"])


def speeds(name: str) -> dict[str, float]:
    """What was measured for ``local/NAME``: ``reading`` and ``writing`` tokens/s (either may be absent)."""
    return dict(_read()["speeds"].get(name) or {})


def record_speed(name: str, **measured: float) -> None:
    """Keep a measured speed (``reading=``, ``writing=`` tokens/s) so the next process starts from it."""
    data = _read()
    data["speeds"].setdefault(name, {}).update({key: round(value, 1) for key, value in measured.items()})
    _write(data)


def _read() -> dict[str, Any]:
    path = registry_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {"version": _VERSION, "models": {}, "speeds": {}}
    except OSError as error:
        raise RegistryUnreadable(f"{path} cannot be read ({error.strerror or error}).") from None
    try:
        data = json.loads(raw)
        if not (isinstance(data, dict) and isinstance(data.get("models"), dict)):
            raise ValueError("not a registry")
        if not all(isinstance(entry, dict) and isinstance(entry.get("path"), str) for entry in data["models"].values()):
            raise ValueError("an entry without a path")
    except ValueError as error:
        raise RegistryUnreadable(f"{path} is not a registry of local models ({error}); fix or delete it.") from None
    data.setdefault("speeds", {})
    return data


def _write(data: dict[str, Any]) -> None:
    """Replace the registry whole (a reader sees the old file or the new one), owner-only."""
    path = registry_path()
    _private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)  # created 0600, kept by the rename
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({**data, "version": _VERSION}, handle, indent=1, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _private_dir(path: Path) -> None:
    """Create the oblix home owner-only if it is missing; an existing folder is the user's and left as it is."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
