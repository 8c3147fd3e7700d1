"""Paths to the shipped example files, found without importing the model pipeline (which needs torch)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def examples_path(name: str) -> Path:
    return Path(str(resources.files("nlpsuite.examples"))) / name
