"""xraypose: find where an X-ray was taken from.

Given a CT and an X-ray, recover the C-arm's 6-DoF pose relative to the CT
(DiffPose-style: differentiable DRRs, patient-specific pose regression,
test-time registration).  World frame = the CT's RAS mm; poses are
``camera_to_world`` 4×4 matrices.  See docs/conventions.md.
"""

__version__ = "0.1.0"
