"""oblix_jupyter: persistent, notebook-aware conversations with language models.

Importing the package is cheap on purpose (no litellm): the public names are loaded
on first use, so ``%load_ext oblix_jupyter`` and ``import oblix_jupyter`` stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "OblixClient": "sdk",  # the client plus start_chat, which opens a front end (see sdk.py)
    "SessionManager": "sessions",
    "OblixError": "errors",
    "SessionNotFound": "errors",
    "InvalidSessionId": "errors",
    "ModelError": "errors",
    "NoModelConfigured": "errors",
    "TurnResult": "turn",  # what OblixClient.turn returns
    "TurnOptions": "turn",  # its keyword options, typed
}

if TYPE_CHECKING:
    from .sdk import OblixClient
    from .errors import (
        InvalidSessionId,
        ModelError,
        NoModelConfigured,
        OblixError,
        SessionNotFound,
    )
    from .store.sessions import SessionManager
    from .turn import TurnOptions, TurnResult


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the built extension (for ``jupyter labextension develop``)."""
    return [{"src": "labextension", "dest": "oblix-jupyter"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext oblix_jupyter``: register ``%%oblix``/``%oblix``; what a first turn would do first (litellm...) starts in the background."""
    from .frontends.magics import load

    load(ipython)


def current() -> Any:
    """This notebook's session as a scripting object (``.messages``, ``.ask(...)``)."""
    from .frontends.magics import active

    return active().current()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oblix_jupyter' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


__all__ = sorted(_LAZY)
