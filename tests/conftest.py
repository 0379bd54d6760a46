"""Shared fixtures: the implementation switch for exercises, and a small shapes set."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def impl(request) -> str:
    """The `--impl` option ("reference" or "exercises"), declared in the root conftest.py."""
    return request.config.getoption("--impl")


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory) -> Path:
    """A small shapes set (64 train, 16 val images), generated once per test session."""
    from tutorial.data.shapes import ShapesConfig, generate

    root = tmp_path_factory.mktemp("shapes")
    return generate(root, ShapesConfig(num_train=64, num_val=16), workers=1, progress=False)
