import json

import pytest

from jojoscl_dist.train.ray_session import FAULT_ENV


@pytest.fixture
def inject_faults(monkeypatch):
    """``inject_faults(**spec)``: the Ray runs started after the call inject these faults into their workers
    (``ray_session.inject_faults``: starts, nan_step, epoch/rank/marker); ``inject_faults()`` turns them off."""

    def inject(**spec) -> None:
        if spec:
            monkeypatch.setenv(FAULT_ENV, json.dumps(spec))
        else:
            monkeypatch.delenv(FAULT_ENV, raising=False)

    return inject
