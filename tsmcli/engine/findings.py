"""``Finding``: one thing ``tsm doctor`` reports about a dataset or recipe, and ``tsm train``
logs (a warning) or stops on (an error) before its first step.

A check either raises (the rules ``tsm train`` and ``tsm eval`` always enforced: one
``TSMError`` line) or returns findings; ``Finding.from_error`` turns the first kind into the
second with the same line, so the two commands never word one problem two ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsmcli.choices import SEVERITIES
from tsmcli.errors import DataError, TSMError


@dataclass(frozen=True)
class Finding:
    """One thing ``tsm doctor`` reports (and ``tsm train`` logs or stops on): how much it
    matters (``severity``: error, warning or note), which check found it (``check``, a dotted
    id such as ``list.duplicates``), what it is (``message``, naming the file and line), what
    to do (``fix``), and the file it concerns. ``line`` is the one line both commands print;
    ``kind`` is the error ``tsm train`` raises for it."""

    severity: str
    check: str
    message: str
    fix: str
    file: str | None = None
    kind: type[TSMError] = field(default=DataError, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    @property
    def line(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message

    def error(self) -> TSMError:
        """The error ``tsm train`` stops with: this finding's line."""
        return self.kind(self.line)

    @classmethod
    def from_error(cls, check: str, exc: TSMError, file: str | Path | None = None) -> Finding:
        """A rule that raises, as an error finding with the same line: the message up to its
        last ``; ``, and the fix after it."""
        message, _, fix = str(exc).rpartition("; ")
        if not message:
            message, fix = fix, ""
        return cls("error", check, message, fix, None if file is None else str(file), type(exc))

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "check": self.check,
            "message": self.message,
            "fix": self.fix,
            "file": self.file,
        }
