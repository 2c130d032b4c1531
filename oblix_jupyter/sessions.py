"""``from oblix_jupyter.sessions import SessionManager``, as the Oblix SDK's documentation imports it.

The store itself lives in ``oblix_jupyter.store``; this module only keeps that import working.
"""

from .store.base import SessionStore
from .store.sessions import SessionManager

__all__ = ["SessionManager", "SessionStore"]
