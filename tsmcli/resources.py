"""Where the shipped recipes, dataset manifests and model zoo registry live.

In a checkout the recipes and manifests are the top-level ``recipes/`` and ``datasets/``
folders; a wheel installs the same folders inside the package (see ``package-dir`` in
pyproject.toml). The model zoo registry is not a dataset: it sits beside ``zoo.py``, which
reads it, in the package itself.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"the shipped {name}/ folder is missing from {_PACKAGE}; reinstall tsmcli"
    )


def recipes_dir() -> Path:
    """Folder of the YAML recipes shipped with the package."""
    return _data_dir("recipes")


def datasets_dir() -> Path:
    """Folder of the dataset manifests shipped with the package."""
    return _data_dir("datasets")


def labels_dir() -> Path:
    """Folder of the shipped class lists, one class name a line."""
    return datasets_dir() / "labels"


def zoo_registry_path() -> Path:
    """The shipped model zoo registry (``tsmcli/zoo.yaml``)."""
    return _PACKAGE / "zoo.yaml"
