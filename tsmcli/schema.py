"""Strict typed values: the fields of a frozen dataclass read from YAML, checked against
their annotations (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``tuple[X, ...]``,
``X | None``), each error a ``RecipeError`` naming the dotted key, what was expected and the
value; a nested mapping of a ``name`` and sections of such dataclasses, built strictly
(``build_sections``), and ``section.key=value`` overrides (``apply_override``). Recipes are
built on it; the sections are theirs.

YAML 1.1 quirks are smoothed over where the meaning is clear: ``flip: off`` (which YAML reads
as ``false``) means ``"off"`` for a key whose choices are on/off, and ``1e-4`` (which YAML
reads as a string) is a float.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from tsmcli.errors import RecipeError

# section name -> its frozen dataclass (whose ClassVar _section is the same name)
Sections = Mapping[str, type]
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def check_types(config: Any) -> None:
    """Check (and normalise, e.g. list -> tuple) every field of a section dataclass; its
    ``_section`` class attribute prefixes the keys in errors (``optim.lr``)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        key = f"{config._section}.{f.name}"
        object.__setattr__(config, f.name, coerce(key, getattr(config, f.name), hints[f.name]))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``, or a RecipeError naming the key, the type and the value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(key, value, inner)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        if value not in choices:
            raise RecipeError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return value
    if origin is tuple:
        (inner, _) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{key} must be a list of {_describe(inner)}s, got {value!r}")
        return tuple(coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-4 as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"recipe field {key} has an unsupported type {tp!r}")


def _describe(tp: Any) -> str:
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def require(ok: bool, key: str, what: str, value: Any) -> None:
    """A ``RecipeError`` naming ``key`` unless ``ok``: ``{key} {what}, got {value!r}``."""
    if not ok:
        raise RecipeError(f"{key} {what}, got {value!r}")


def plain(value: Any) -> Any:
    """A field's value as YAML and checkpoints store it (a tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------------------
# sections


def build_sections(raw: Any, sections: Sections, *, what: str) -> dict[str, Any]:
    """Each section of ``raw`` (a mapping of a ``name`` and the sections) built strictly:
    an unknown key names the closest valid one; a missing section takes its defaults."""
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{what} must be a mapping with sections {', '.join(sections)}")
    for key in raw:
        if key != "name" and key not in sections:
            raise RecipeError(_unknown_key_message(str(key), None, sections))
    built: dict[str, Any] = {}
    for section, cls in sections.items():
        values = raw.get(section) or {}
        if not isinstance(values, Mapping):
            raise RecipeError(f"{section} must be a mapping of keys, got {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise RecipeError(_unknown_key_message(f"{section}.{key}", section, sections))
        built[section] = cls(**values)
    return built


def apply_override(raw: dict[str, Any], item: str, sections: Sections) -> None:
    """Set one ``section.key=value`` (or ``name=value``) in the raw nested dict, checking the
    key and the value's type now; the value is read as YAML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    source = f"--set {item}"
    if not sep:
        raise RecipeError(f"{source}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    if key == "name":
        try:
            raw["name"] = coerce("name", _as_typed(value, text, str), str)
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None
        return
    section, _, leaf = key.partition(".")
    if section not in sections:
        raise RecipeError(f"{source}: {_unknown_key_message(key, None, sections)}")
    cls = sections[section]
    hints = typing.get_type_hints(cls)
    if leaf not in hints or leaf.startswith("_"):
        if not leaf:
            raise RecipeError(
                f"{source}: name a key inside {section}, e.g. {section}.{_fields(cls)[0]}"
            )
        raise RecipeError(f"{source}: {_unknown_key_message(key, section, sections)}")
    try:
        value = coerce(key, _as_typed(value, text, hints[leaf]), hints[leaf])
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    section_values = raw.get(section)
    if not isinstance(section_values, dict):
        section_values = {}
        raw[section] = section_values
    section_values[leaf] = value


def _as_typed(value: Any, text: str, tp: Any) -> Any:
    """For a free-text key (a path, a name), the text as typed when YAML read it as something
    else: ``--set data.root=2024`` is the folder ``2024``, not the integer."""
    is_text = tp is str or (
        typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)
    )
    if is_text and value is not None and not isinstance(value, str | list | dict):
        return text.strip()
    return value


def _unknown_key_message(key: str, section: str | None, sections: Sections) -> str:
    if section is None:
        leaves = {f: f"{s}.{f}" for s, cls in sections.items() for f in _fields(cls)}
        if key in leaves:
            return f"unknown key '{key}'; did you mean '{leaves[key]}'?"
        candidates = ["name", *sections, *leaves.values()]
    else:
        candidates = [f"{section}.{f}" for f in _fields(sections[section])]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if close:
        return f"unknown key '{key}'; did you mean '{close[0]}'?"
    return f"unknown key '{key}'; valid keys: {', '.join(candidates)}"


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
