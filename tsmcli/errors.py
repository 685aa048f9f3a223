"""Errors a user can cause. The CLI prints each as one line and exits 1 (2 for usage).

Every message names the file, key or value at fault and says what to do about it, so a
user never needs the traceback (``TSM_DEBUG=1`` shows it anyway).
"""

from __future__ import annotations


class TSMError(Exception):
    """Base class of the errors the CLI turns into one clean line."""

    exit_code = 1


class UsageError(TSMError):
    """The command line itself is wrong (a missing option, an impossible combination)."""

    exit_code = 2


class RecipeError(TSMError):
    """A recipe key is unknown, mistyped or out of range."""


class DataError(TSMError):
    """A video, frame folder, list file or annotation file cannot be used."""


class CheckpointError(TSMError):
    """A checkpoint cannot be read or does not match the architecture asked for."""


class TrainingError(TSMError):
    """Training cannot go on (a non-finite loss, a refused run dir)."""


class ExportError(TSMError):
    """An exported model does not reproduce the PyTorch model it came from."""


class OutputError(TSMError):
    """An output cannot be written (a full disk); what was there before is kept."""
