"""Command-line options generated from pydantic settings models: each setting is declared once.

A field becomes an option when its ``json_schema_extra`` names a ``flag``; its description is
the help text and its default is the model's own, so argparse never restates one. Options
left unset are not passed on, and the model fills in its defaults. ``--set`` and the
environment overlay of the daemon use the same dotted keys (``mqtt.broker``).
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from linewatch.edge.errors import UsageError


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def settings(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf setting of ``model`` as (dotted key, field), sections recursed into, in declaration order."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from settings(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def flag(field: FieldInfo) -> str | None:
    """The command-line flag of a setting, when it has one."""
    value = _extra(field).get("flag")
    return str(value) if value else None


def default_text(field: FieldInfo) -> str:
    """The default as a person reads it (empty when there is none to show)."""
    if field.is_required():
        return ""
    default = field.get_default(call_default_factory=True)
    if default is None or default == {} or default == []:
        return ""
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default)
    return str(default).lower() if isinstance(default, bool) else str(default)


def choices(field: FieldInfo) -> list[str] | None:
    """The allowed values of a ``Literal`` setting, as strings."""
    annotation = field.annotation
    if typing.get_origin(annotation) is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """An option for every setting of ``model`` that declares a flag; unset options stay ``None``."""
    for key, field in settings(model):
        name = flag(field)
        if name is None:
            continue
        help_text = (_extra(field).get("flag_help") or field.description or "").replace("%", "%%")
        shown = default_text(field)
        if field.annotation is bool:
            negate = bool(_extra(field).get("negate"))
            parser.add_argument(name, dest=key, action="store_const", const=not negate, default=None,
                                help=help_text)
            continue
        values = choices(field)
        if shown and "default:" not in help_text:
            help_text += f" (default: {shown})"
        const = _extra(field).get("const")  # the flag alone gives this value
        metavar = "{" + ",".join(values) + "}" if values else key.rsplit(".", 1)[-1].upper()  # the choices, shown
        parser.add_argument(name, dest=key, default=None, choices=values, metavar=metavar,
                            help=help_text, **({"nargs": "?", "const": const} if const is not None else {}))


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The dotted settings the user set on the command line."""
    return {key: getattr(args, key) for key, field in settings(model)
            if flag(field) and getattr(args, key, None) is not None}


def describe(error: ValidationError, model: type[BaseModel] | None = None, noun: str = "config key") -> str:
    """One line naming the setting (and its flag) that is wrong, for a ``UsageError``."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    flags = {key: flag(field) for key, field in settings(model)} if model else {}
    named = f"{noun} {where}" + (f" ({flags[where]})" if flags.get(where) else "")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{named}: {first['msg']}{more}"


def build(model: type[BaseModel], values: dict[str, Any], noun: str = "config key") -> Any:
    """Validate ``values`` (a nested dict) into ``model``; a mistake is a one-line ``UsageError``."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise UsageError(describe(exc, model, noun)) from None


def set_key(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, making sections on the way."""
    *parents, key = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise UsageError(f"config key {dotted}: {part} is not a section")
    tree[key] = value
