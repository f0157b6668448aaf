"""Datasets: DeepFluoro and Ljubljana (HDF5), a folder of the user's own data, and generated fixtures.

* :class:`DeepFluoroDataset` — ``DeepFluoroDataset(id_number, filename=..., preprocess=True)``;
  ``specimen[i]`` is (image, pose) in xraypose's frames.
* :class:`LjubljanaDataset` — the 10 cerebral subjects, AP and LAT views.
* :func:`load_case` / :class:`Case` — CT + X-rays + optional fiducials and poses
  from a folder (layout in docs/datasets.md); :func:`make_example_case` writes one
  from the bundled CT.
* :class:`AutoscoperWrist` — the Autoscoper wrist trial: real biplane radiographs
  (preprocessed, masked), MayaCam calibrations, CT bone volumes (TIFF stacks).
* :func:`write_deepfluoro_fixture`, :func:`write_ljubljana_fixture` — layout-exact
  HDF5 files generated from a real CT (tests, trying the loaders without the data).
"""

from xraypose.datasets.autoscoper import AutoscoperWrist
from xraypose.datasets.case_folder import Case, load_case, make_example_case
from xraypose.datasets.deepfluoro import DeepFluoroDataset
from xraypose.datasets.fixtures import write_deepfluoro_fixture, write_ljubljana_fixture
from xraypose.datasets.ljubljana import LjubljanaDataset

__all__ = [
    "AutoscoperWrist",
    "DeepFluoroDataset",
    "LjubljanaDataset",
    "Case",
    "load_case",
    "make_example_case",
    "write_deepfluoro_fixture",
    "write_ljubljana_fixture",
]
