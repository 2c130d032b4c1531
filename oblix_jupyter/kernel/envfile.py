"""A ``.env`` file beside the notebook: it may hand over keys, and nothing else.

A ``.env`` arrives with whatever repository is cloned. If one could set an endpoint
(``OPENAI_API_BASE``), a proxy (``HTTPS_PROXY``), a certificate bundle or the store's
location (``OBLIX_HOME``), the user's own key would go with every prompt to a stranger's
server, or the conversation to a stranger's folder. So a ``.env`` may only supply
credentials, named as providers name them (``OPENAI_API_KEY``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``...), and never replaces a variable already set;
every other name in it is ignored, and reported as ignored. Values are never reported:
they are keys.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

CREDENTIAL_SUFFIXES = ("_KEY", "_KEY_ID", "_TOKEN", "_SECRET")  # _API_KEY ends in _KEY
SETTINGS_PREFIXES = ("OBLIX_", "LITELLM_")  # oblix's and litellm's settings are never keys, whatever their endings
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class DotenvResult:
    """What one ``.env`` file did: names only, never values."""

    path: str
    loaded: tuple[str, ...] = ()  # keys set from the file
    already_set: tuple[str, ...] = ()  # keys the file names that were set already, and stay as they were
    ignored: tuple[str, ...] = ()  # names a .env may not set

    def describe(self) -> str:
        """One line for a footer or ``oblix doctor``, e.g. "loaded OPENAI_API_KEY from /p/.env; ignored HTTPS_PROXY (...)"."""
        said = []
        if self.loaded:
            said.append(f"loaded {', '.join(self.loaded)}")
        if self.already_set:
            said.append(f"kept {', '.join(self.already_set)} as already set")
        if self.ignored:
            said.append(f"ignored {', '.join(self.ignored)} (a .env may only set keys)")
        if not said:
            return f"{self.path} sets nothing"
        said[0] += f" from {self.path}"
        return "; ".join(said)


def is_credential(name: str) -> bool:
    """Whether a ``.env`` may set ``name``: a provider's key, token or secret, and not a setting."""
    upper = name.upper()
    return upper.endswith(CREDENTIAL_SUFFIXES) and not upper.startswith(SETTINGS_PREFIXES)


def load_dotenv(directory: str) -> DotenvResult | None:
    """Set the keys of ``directory/.env`` that are not set yet; None when there is no readable file there.

    Lines are ``NAME=value``, optionally after ``export`` and with the value quoted;
    comments, blank lines and lines without a valid name are skipped.
    """
    path = os.path.join(os.path.abspath(directory), ".env")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    loaded: dict[str, None] = {}
    already_set: dict[str, None] = {}
    ignored: dict[str, None] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not _NAME.match(name) or name in loaded:
            continue
        if not is_credential(name):
            ignored[name] = None
        elif name in os.environ:
            already_set[name] = None
        else:
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            os.environ[name] = value
            loaded[name] = None
    return DotenvResult(path, tuple(loaded), tuple(already_set), tuple(ignored))
