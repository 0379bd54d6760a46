"""pytest options of the whole repository.

`--impl` is declared here, at the root, rather than in tests/conftest.py: pytest reads the
command line before it imports tests/conftest.py, and in `pytest --impl exercises -k box_ops`
it would take the unknown `--impl`'s value, `exercises`, for a folder to collect from (so that
tests/conftest.py is never loaded and `--impl` is rejected). A root conftest.py is always loaded.
"""
from __future__ import annotations

import os


def pytest_addoption(parser):
    parser.addoption("--impl", choices=["reference", "exercises"], default=os.environ.get("TUTORIAL_IMPL", "reference"),
                     help="test the package's reference bodies (default) or your exercises/ (TUTORIAL_IMPL)")
