"""tsmcli: Temporal Shift Module training, evaluation and deployment.

The public API is imported lazily so that ``import tsmcli`` (and ``tsm --help``) does not
pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "ModelSpec": "tsmcli.model.spec",
    "ArchOverrides": "tsmcli.model.spec",
    "ViewRequest": "tsmcli.view_request",
    "build_model": "tsmcli.model.tsn",
    "load_model": "tsmcli.model.checkpoint",
    "read_checkpoint": "tsmcli.model.checkpoint",
    "load_recipe": "tsmcli.recipe",
    "extract": "tsmcli.data.extract",
    "build_list": "tsmcli.data.build_list",
    "synth": "tsmcli.data.synth",
    "doctor": "tsmcli.engine.doctor",
    "train": "tsmcli.engine.train",
    "evaluate": "tsmcli.engine.evaluate",
    "run_eval": "tsmcli.engine.evaluate",
    "evaluate_online": "tsmcli.engine.online",
    "predict": "tsmcli.engine.predict",
    "stream": "tsmcli.engine.stream",
    "convert_online": "tsmcli.engine.convert",
    "export_model": "tsmcli.engine.deploy",
    "demo": "tsmcli.showcase",
    "download_checkpoint": "tsmcli.zoo_cache",
    "resolve_checkpoint": "tsmcli.zoo_cache",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'tsmcli' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
