"""Tools declared where they are written: each tool's name, description and JSON schema sit on its function, and calls are checked against them.

``@registry.tool(...)`` registers the function it decorates with what the model is told
about it, and refuses a declaration whose schema and function disagree (a parameter one
has and the other lacks, a required one with a default), so the two cannot drift apart.
A call is found by its name in the registry, never as an attribute of anything, and its
arguments, written by the model, are parsed and checked against the schema before the
function sees them; every refusal is one line the model can act on.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import OblixError

Description = str | Callable[[Any], str]  # a fixed text, or one written for the tools' owner (the limits it has, the cells run)


class ToolRefusal(OblixError):
    """A call a tool cannot answer; its one-line message is the result the model reads."""


class InvalidToolDeclaration(OblixError, TypeError):
    """A tool declared without a schema, or with one that does not match its function: a mistake in our code, found at import."""


@dataclass(frozen=True)
class Tool:
    """One tool: what the model is told about it, and the function that answers it."""

    name: str
    description: Description
    parameters: Mapping[str, Any]  # the JSON schema of its arguments, an object
    function: Callable[..., Any]
    offered_when: Callable[[Any], bool] | None = None

    def schema(self, owner: Any) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this tool, its description written for ``owner``."""
        description = self.description if isinstance(self.description, str) else self.description(owner)
        return {"type": "function", "function": {"name": self.name, "description": description, "parameters": self.parameters}}


class ToolRegistry:
    """The tools of one kind of owner (``KernelTools``), in the order they were declared: the order the model sees them."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def tool(
        self,
        name: str,
        description: Description,
        *,
        properties: Mapping[str, Mapping[str, Any]],
        required: Sequence[str] = (),
        offered_when: Callable[[Any], bool] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as tool ``name``, taking the arguments ``properties`` describes.

        The function is called as ``function(owner, **arguments)``; ``offered_when(owner)``
        decides whether an owner offers it at all (a cell tool needs a cell history).
        """

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._tools:
                raise InvalidToolDeclaration(f"Tool {name!r} is declared twice.")
            if not isinstance(properties, Mapping) or not all(isinstance(schema, Mapping) for schema in properties.values()):
                raise InvalidToolDeclaration(f"Tool {name!r} has no JSON schema for its arguments; give `properties` (empty for none).")
            if not description:
                raise InvalidToolDeclaration(f"Tool {name!r} has no description: the model would not know when to call it.")
            _check_signature(name, function, properties, required)
            parameters = {"type": "object", "properties": dict(properties), "required": list(required), "additionalProperties": False}
            self._tools[name] = Tool(name, description, parameters, function, offered_when)
            return function

        return register

    def offered(self, owner: Any) -> list[Tool]:
        return [tool for tool in self if tool.offered_when is None or tool.offered_when(owner)]

    def schemas(self, owner: Any) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` list ``owner`` offers: one ``{"type": "function", "function": {...}}`` per tool."""
        return [tool.schema(owner) for tool in self.offered(owner)]

    def call(self, owner: Any, name: str, arguments: str | Mapping[str, Any] | None) -> Any:
        """Run tool ``name`` for ``owner`` with the model's ``arguments`` (JSON text or a mapping), checked first.

        Raises ``ToolRefusal`` for a tool ``owner`` does not offer and for arguments its schema does not accept.
        """
        offered = {tool.name: tool for tool in self.offered(owner)}
        if name not in offered:
            raise ToolRefusal(f"Unknown tool {name!r}. Tools: {', '.join(offered)}.")
        tool = offered[name]
        return tool.function(owner, **checked(parsed(arguments), tool.parameters))


def _check_signature(name: str, function: Callable[..., Any], properties: Mapping[str, Any], required: Sequence[str]) -> None:
    """Refuse a declaration whose schema and function disagree: the model would be told of arguments the function cannot take."""
    parameters = list(inspect.signature(function).parameters.values())[1:]  # after the owner
    accepted = {parameter.name: parameter for parameter in parameters}
    if set(accepted) != set(properties):
        raise InvalidToolDeclaration(f"Tool {name!r}: its schema has arguments {sorted(properties)}, its function {sorted(accepted)}.")
    for key in properties:
        optional = accepted[key].default is not inspect.Parameter.empty
        if optional == (key in required):
            kind = "required, but its function gives it a default" if optional else "optional, but its function has no default for it"
            raise InvalidToolDeclaration(f"Tool {name!r}: argument {key!r} is {kind}.")


# -- the model's arguments ------------------------------------------------------------------

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (Mapping,),
}


def parsed(arguments: str | Mapping[str, Any] | None) -> Any:
    """The model's arguments as a value: JSON text decoded, nothing (or blank text) as no arguments."""
    if arguments is None or isinstance(arguments, str) and not arguments.strip():
        return {}
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError as error:
        raise ToolRefusal(f"The arguments are not valid JSON ({error}); send one JSON object.") from None


def checked(value: Any, schema: Mapping[str, Any], path: str = "") -> Any:
    """``value`` checked against the part of JSON Schema our tools' schemas use; integral floats become ints.

    ``type``, ``enum``, ``items``, ``properties`` and ``required`` are checked, and no
    property beyond those declared is accepted. Bounds (``minimum``, ``maximum``,
    ``maxItems``) are left to the tool, which clamps or explains them, so that a model
    asking for too much still gets an answer or a reason in the tool's own words.
    """
    what = f"`{path}`" if path else "The arguments"
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind is not None and (not isinstance(value, _JSON_TYPES[kind]) or isinstance(value, bool) and kind in ("integer", "number")):
        article = "an" if kind[0] in "aeiou" else "a"
        raise ToolRefusal(f"{what} must be {article} {kind}, not {_shown(value)}.")
    if "enum" in schema and value not in schema["enum"]:
        raise ToolRefusal(f"{what} must be one of {', '.join(map(str, schema['enum']))}; got {_shown(value)}.")
    if kind == "array":
        return [checked(item, schema["items"], f"{path}[{n}]") for n, item in enumerate(value)]
    if kind != "object":
        return value
    properties = schema["properties"]
    inside = f" in `{path}`" if path else ""
    unknown = [key for key in value if key not in properties]
    if unknown:
        raise ToolRefusal(f"Unknown argument {', '.join(map(_shown, unknown))}{inside}; accepted: {', '.join(properties) or 'none'}.")
    missing = [key for key in schema.get("required", ()) if key not in value]
    if missing:
        raise ToolRefusal(f"Missing argument {', '.join(map(repr, missing))}{inside}.")
    return {key: checked(item, properties[key], f"{path}.{key}" if path else key) for key, item in value.items()}


def _shown(value: Any) -> str:
    """What the model sent, quoted short and on one line: the refusal must stay one line whatever it sent."""
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
