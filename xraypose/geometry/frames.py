"""Fixed frame changes, each written once: float64 ``(4, 4)`` tensors (``.numpy()`` for NumPy code).

* :data:`LPS_TO_RAS` — DICOM/ITK patient coordinates (x left, y posterior) to world RAS
  (x right, y anterior): ``diag(-1, -1, 1, 1)``; its own inverse.
* :data:`ROLL_180` — a 180° turn about the camera's z axis (the principal ray), applied on the
  right of a ``camera_to_world`` pose (``pose @ ROLL_180``): the image turned upside down, as a
  C-arm's detector rotated by 180°; also ``diag(-1, -1, 1, 1)``, its own inverse.

Do not change them in place: every module that imports them shares the tensor.
"""

from __future__ import annotations

import torch

__all__ = ["LPS_TO_RAS", "ROLL_180"]

#: LPS ↔ RAS (x and y flipped); its own inverse.
LPS_TO_RAS = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))

#: 180° about the camera's principal ray: ``pose @ ROLL_180``; its own inverse.
ROLL_180 = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
