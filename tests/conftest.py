import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (pyproject's addopts: one worker per CPU, at most 4) each worker keeps to one torch
# thread, so that the workers do not ask for more threads than there are cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

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


@pytest.fixture(autouse=True)
def _locale_kept():
    """GDCM's DICOM writer (SimpleITK, used by the tests that write CT series) leaves the process in the "C"
    locale; a later test writing text without an encoding then failed on "×" (UnicodeEncodeError), depending
    on which tests ran before it.  Every test starts and ends in the locale the session started in."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    yield
    if locale.setlocale(locale.LC_ALL) != saved:
        locale.setlocale(locale.LC_ALL, saved)
