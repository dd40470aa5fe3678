"""Shared test setup: the repository root on sys.path, and few threads (CI has 2 cores)."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (scripts are run from there, like a user would)."""
    return REPO
