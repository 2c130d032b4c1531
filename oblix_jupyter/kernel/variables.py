"""Which notebook variables a prompt refers to, their capped summaries, and the secret values no text may show.

A variable is summarised when ``--vars`` names it, the prompt writes it as ``{name}``, or
its name appears in the prompt as a word; each summary is the one describer's
(``describe``) within ``cap_tokens``. Secret-looking names are left out unless named
explicitly, and so are the values under secret-looking keys and columns, at any depth;
``secret_values`` finds those values so that every text bound for a model can leave them
out, also where nothing names them.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import islice
from typing import Any

from ..context.inputs import VariableSummary
from ..redaction import is_secret_name
from .describe import describe
from .text import CONTAINERS, DEPTH, MAPPINGS, ROUTINES, SCALARS, TEXT_SECONDS, is_module, is_type, text_budget

_HARVESTED = 200  # items of one variable looked through for values under secret-looking names
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit"})
_BRACED = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_][A-Za-z0-9_]*")
_QUOTED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)")


def approximate_tokens(text: str) -> int:
    """About four characters a token, for callers without a model's counter."""
    return (len(text) + 3) // 4


def is_hidden_name(name: str) -> bool:
    """IPython's own names and private ones (``_``, ``_i3``, ``_cache``): never offered or sent as context."""
    return name.startswith("_") or name in _IPYTHON_NAMES


def referenced_names(prompt: str, namespace: Mapping[str, Any], named: Sequence[str] = ()) -> list[str]:
    """Names to describe, in order: ``named`` first, then ``{name}``, then names the prompt mentions.

    A bare word counts only when it is a variable of the namespace, at least two
    characters long (or quoted in backticks), not IPython's own, and not a module.
    """
    chosen = list(dict.fromkeys(named))
    for name in _BRACED.findall(prompt):
        if name in namespace and name not in chosen:
            chosen.append(name)
    quoted = set(_QUOTED.findall(prompt))
    for name in _IDENTIFIER.findall(prompt):
        if name in chosen or name not in namespace or is_hidden_name(name):
            continue
        if len(name) < 2 and name not in quoted:
            continue
        if is_module(namespace[name]):
            continue
        chosen.append(name)
    return chosen


def summarize_variables(
    namespace: Mapping[str, Any],
    prompt: str,
    named: Sequence[str] = (),
    cap_tokens: int = 200,
    count: Callable[[str], int] | None = None,
) -> list[VariableSummary]:
    """Capped summaries of the variables ``prompt`` refers to (see the module docstring).

    A variable ``named`` explicitly is sent as it is, secrets and all: the user asked for it.
    """
    count = count or approximate_tokens
    explicit = set(named)
    withheld: list[str] | None = None  # found once, and only when a variable is described
    summaries = []
    with text_budget(TEXT_SECONDS):
        for name in referenced_names(prompt, namespace, named):
            if name not in namespace:
                summaries.append(VariableSummary(name, "", 0, f"`{name}` is not defined in the notebook.", excluded=True))
                continue
            value = namespace[name]
            warning = None
            if is_secret_name(name):
                if name not in explicit:
                    warning = f"`{name}` looks like a secret and was not sent; name it in --vars to send it."
                    summaries.append(VariableSummary(name, "", 0, warning, excluded=True))
                    continue
                warning = f"`{name}` looks like a secret and is sent because --vars named it."
            withheld = secret_values(namespace, explicit) if withheld is None else withheld
            text = describe(name, value, cap_tokens, count, reveal=name in explicit, withheld=withheld)
            summaries.append(VariableSummary(name, text, count(text), warning))
    return summaries


def secret_values(namespace: Mapping[str, Any], named: Collection[str] = ()) -> list[str]:
    """The strings the notebook marks as secret, unless the user named their variable: never shown in any text.

    They are the values of secret-named string variables and, inside the other
    variables, the strings under secret-looking keys, DataFrame columns and attributes
    (a dataclass's fields, an object's ``__dict__``), so that a value is withheld also
    where nothing names it: a cell's source (``Settings("bob", "pw-4417")``), a traceback,
    another variable. The look is bounded (``_HARVESTED`` items a variable) and runs no
    code of the objects': ``__dict__`` is read only through Python's own descriptor.
    """
    found: list[str] = []
    for name, value in list(namespace.items()):
        if name in named or is_hidden_name(name):
            continue
        if is_secret_name(name):
            found += [value] if type(value) is str else []
            continue
        try:
            _harvest(value, found, [_HARVESTED], 0)
        except Exception:  # noqa: BLE001 - a frame with odd columns, a dict changed meanwhile: what was found stands
            continue
    return found


def _harvest(value: Any, found: list[str], budget: list[int], depth: int, secret: bool = False) -> None:
    """Add to ``found`` the strings of ``value`` that sit under secret-looking names (all of them when ``secret``)."""
    budget[0] -= 1
    if budget[0] < 0 or depth > DEPTH:
        return
    kind = type(value)
    if kind is str:
        found += [value] if secret else []
    elif kind in MAPPINGS:
        for key, item in islice(value.items(), max(0, budget[0])):
            _harvest(item, found, budget, depth + 1, secret or type(key) is str and is_secret_name(key))
    elif kind in CONTAINERS:
        for item in islice(value, max(0, budget[0])):
            if type(item) in SCALARS or type(item) is str and not secret:  # nothing to find: counted, not visited
                budget[0] -= 1
            else:
                _harvest(item, found, budget, depth + 1, secret)
    elif is_type(value, "pandas", "DataFrame"):
        for label in value.columns[:100]:
            if type(label) is str and is_secret_name(label):
                found += [cell for cell in value[label].iloc[:100].tolist() if type(cell) is str]
    elif not issubclass(kind, (type, types.ModuleType, *ROUTINES)) and kind.__module__.split(".")[0] not in ("numpy", "pandas"):
        fields = _instance_dict(value)
        if fields is not None:
            _harvest(fields, found, budget, depth + 1, secret)


def _instance_dict(value: Any) -> dict[str, Any] | None:
    """An object's ``__dict__`` when Python's own descriptor holds it (a class may make ``__dict__`` a property)."""
    for klass in type(value).__mro__:
        descriptor = klass.__dict__.get("__dict__")
        if descriptor is not None:
            fields = descriptor.__get__(value, type(value)) if type(descriptor) is types.GetSetDescriptorType else None
            return fields if type(fields) is dict else None
    return None
