"""The test views asked for: a preset of ``tsm eval --protocol`` and the fields that change it.

One object for what a user asks (``tsm eval``'s and ``tsm predict``'s view options) and for
what the model zoo records of each published number (the protocol it was measured with). It
is only a request: ``engine.views.resolve_views`` turns it into the ``Protocol`` that runs.
Torch-free and on the lowest floor, so the zoo's registry can hold it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ViewRequest:
    """A preset (None: the checkpoint's default) and the fields to change (None: as the
    preset)."""

    preset: str | None = None
    clips: int | None = None
    crops: int | None = None
    full_res: bool | None = None
    twice_sample: bool | None = None
    dense: bool | None = None
    average: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields given beside the preset, as ``resolve_protocol`` keywords."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "preset" and getattr(self, f.name) is not None
        }

    def cli_args(self) -> str:
        """The ``tsm eval`` options that ask for these views."""
        args = ["--protocol", self.preset or "single"]
        for key, value in self.overrides().items():
            option = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(option if value else option.replace("--", "--no-", 1))
            else:
                args += [option, str(value)]
        return " ".join(args)

    def __str__(self) -> str:
        extra = [
            key if value is True else f"{key}={value}" for key, value in self.overrides().items()
        ]
        return " ".join([self.preset or "default", *extra])
