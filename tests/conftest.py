"""Shared fixtures: the real data folder (tests that need it skip when it is absent)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root():
    """``$REGNP_DATA_ROOT`` or ``../shared/data`` beside the checkout, or None."""
    env = os.environ.get("REGNP_DATA_ROOT")
    cand = Path(env) if env else REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture
def data_root():
    root = shared_data_root()
    if root is None:
        pytest.skip("real image sets not found: set REGNP_DATA_ROOT or place them in ../shared/data "
                    "(see README, 'Data')")
    return root
