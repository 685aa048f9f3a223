"""Strict, typed reads of the model zoo registry's values (``zoo.load_registry``): every
failure is one ``DataError`` line that names the registry file and the key at fault.

At the bottom of the package with the registry: the standard library and ``errors`` only.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from tsmcli.errors import DataError


class Checker:
    """Strict, typed reads of registry values; every failure names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> None:
        raise DataError(f"{self.path}: {where or 'top level'}: {problem}")

    def mapping(
        self, raw: Any, where: str, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, f"must be a mapping of {', '.join(required + optional)}")
        known = required + optional
        for key in raw:
            if key not in known:
                self.fail(
                    f"{where}.{key}".lstrip("."), f"unknown key; {suggest(str(key), list(known))}"
                )
        missing = [key for key in required if key not in raw]
        if missing:
            self.fail(where, f"missing {', '.join(missing)}")
        return raw

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty string, not {value!r}")
        return value

    def strings(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(where, "must be a list of strings")
        return [self.text(item, f"{where}[{i}]") for i, item in enumerate(value)]

    def choice(self, value: Any, where: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.fail(where, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def integer(self, value: Any, where: str, *, minimum: int, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(
                where,
                f"must be an integer >= {minimum}{' or null' if optional else ''}, not {value!r}",
            )
        return value

    def flag(self, value: Any, where: str) -> bool | None:
        if value is not None and not isinstance(value, bool):
            self.fail(where, f"must be true or false, not {value!r}")
        return value

    def percent(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            self.fail(where, f"must be a percentage (0-100), not {value!r}")
        return float(value)


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "see `tsm zoo list`" if len(known) > 8 else f"choose one of {', '.join(known)}"


def first_line(value: Any) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else type(value).__name__
