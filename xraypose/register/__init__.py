"""Test-time registration (DiffPose's second stage): initialisers, optimisation, results.

    from xraypose.register import Registrar, RegistrationConfig, register_xray, write_registration

The starts (:mod:`xraypose.register.starts`), several views (:mod:`xraypose.register.multiview`),
tracking (:mod:`xraypose.register.tracking`) and the confidence check
(:mod:`xraypose.register.confidence`) live in their own modules.
"""

from xraypose.register.api import Registration, register_xray, registration_metrics, write_registration
from xraypose.register.config import METAL_LEVELS
from xraypose.register.initializers import (
    ModelInitializer,
    PosePredictor,
    antipodal,
    carm_angles_pose,
    fixed_pose,
    pose_from_json,
    with_antipodal,
)
from xraypose.register.optimizer import (
    DEFAULT_LEVELS,
    FAST_LEVELS,
    Level,
    Registrar,
    RegistrationConfig,
    RegistrationResult,
    levels_for_sizes,
)
from xraypose.register.starts import STARTS

__all__ = ["DEFAULT_LEVELS", "FAST_LEVELS", "METAL_LEVELS", "Level", "Registrar", "RegistrationConfig", "RegistrationResult",
           "levels_for_sizes", "Registration", "register_xray", "write_registration", "registration_metrics",
           "ModelInitializer", "PosePredictor", "fixed_pose", "carm_angles_pose", "pose_from_json", "antipodal",
           "with_antipodal", "STARTS"]
