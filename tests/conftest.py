import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_path(*parts) -> Path:
    return SHARED.joinpath(*parts)


requires_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")


@pytest.fixture(scope="session")
def sample_ct():
    """The bundled pelvis CT (:func:`xraypose.volume.load_sample_ct`), read once for the whole session and
    shared by every test that takes it: a test must not change it (copy it first)."""
    from xraypose.volume import load_sample_ct

    return load_sample_ct()
