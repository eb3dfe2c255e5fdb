import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("JOJOSCL_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.fail(f"shared datasets not found at {DATA}; set JOJOSCL_SHARED_DIR")
    return DATA


@pytest.fixture(autouse=True)
def _no_outside_tracking_server(monkeypatch):
    """Runs under test log to their own sqlite store under --output, never to a server the environment names."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
