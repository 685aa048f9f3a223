"""Where the shipped recipes and dataset manifests live, installed or in a checkout.

In a checkout they are the top-level ``recipes/`` and ``datasets/`` folders; a wheel
installs the same folders inside the package (see ``package-dir`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the shipped {name}/ folder is missing from {_PACKAGE}; reinstall tsmcli")


def recipes_dir() -> Path:
    """Folder of the YAML recipes shipped with the package."""
    return _data_dir("recipes")


def datasets_dir() -> Path:
    """Folder of the dataset manifests shipped with the package."""
    return _data_dir("datasets")


def labels_dir() -> Path:
    """Folder of the shipped class lists, one class name a line."""
    return datasets_dir() / "labels"


# the model zoo registry sits beside the dataset manifests (it ships the same way) but is not one
ZOO_REGISTRY = "zoo.yaml"


def zoo_registry_path() -> Path:
    """The shipped model zoo registry (``datasets/zoo.yaml``)."""
    return datasets_dir() / ZOO_REGISTRY
