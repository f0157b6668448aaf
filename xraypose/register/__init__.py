"""Test-time registration (DiffPose's second stage): initialisers, optimisation, results.

    from xraypose.register import Registrar, RegistrationConfig, register_xray, write_registration

The starts (:mod:`xraypose.register.starts`), several views (:mod:`xraypose.register.multiview`),
tracking (:mod:`xraypose.register.tracking`) and the confidence check
(:mod:`xraypose.register.confidence`) live in their own modules.

The names below are imported when first used (PEP 562): ``import xraypose.register.config`` (the
configuration and its levels, no PyTorch) then costs no PyTorch import — the command line's help
and option checks need only that.
"""

import importlib

#: Each public name and the module that defines it.
_WHERE = {
    "Registration": "api", "register_xray": "api", "registration_metrics": "api", "write_registration": "api",
    "METAL_LEVELS": "config",
    "ModelInitializer": "initializers", "PosePredictor": "initializers", "antipodal": "initializers",
    "carm_angles_pose": "initializers", "fixed_pose": "initializers", "pose_from_json": "initializers",
    "with_antipodal": "initializers",
    "DEFAULT_LEVELS": "optimizer", "FAST_LEVELS": "optimizer", "Level": "optimizer", "Registrar": "optimizer",
    "RegistrationConfig": "optimizer", "RegistrationResult": "optimizer", "levels_for_sizes": "optimizer",
    "STARTS": "starts",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"xraypose.register.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xraypose.register' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
