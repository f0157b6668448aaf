"""Names the configurations choose from, in one place without PyTorch.

Configurations (:class:`~xraypose.register.RegistrationConfig`, the training config) and the command
line validate names against these without importing PyTorch (``xraypose --help`` then does not pay
for it).  The modules that implement them take their lists from here: rotation parameterizations and
Euler conventions (:mod:`xraypose.geometry.parameterizations`, re-exported by
:mod:`xraypose.geometry`), registration's similarity measures (:mod:`xraypose.register.measures`:
one measure per name, checked at its import) and density models (:mod:`xraypose.render.density`).
"""

#: Number of rotation parameters of each parameterization.
ROTATION_PARAMETERIZATIONS: dict[str, int] = {
    "axis_angle": 3,
    "euler_angles": 3,
    "quaternion": 4,
    "rotation_6d": 6,
    "rotation_10d": 10,
    "quaternion_adjugate": 10,
    "matrix": 9,
    "se3_log_map": 3,
}

#: The 12 axis sequences (uppercase = intrinsic; the lowercase form = extrinsic).
EULER_CONVENTIONS: tuple[str, ...] = (
    "XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX",
    "XYX", "XZX", "YXY", "YZY", "ZXZ", "ZYZ",
)


def is_euler_convention(convention) -> bool:
    """Whether ``convention`` names an Euler axis sequence: one of :data:`EULER_CONVENTIONS`, or its lowercase form."""
    return isinstance(convention, str) and (
        convention in EULER_CONVENTIONS or (convention.islower() and convention.upper() in EULER_CONVENTIONS))


#: Registration's similarity measures (:data:`xraypose.register.measures.MEASURES` has one per name).
SIMILARITY_MEASURES: tuple[str, ...] = ("mncc", "ncc", "gncc", "mixed")

#: Density models registration and :class:`~xraypose.render.DRR` render (:data:`xraypose.render.density.DENSITY_MODELS`).
DENSITY_MODELS: tuple[str, ...] = ("hu", "physical", "raw", "linear")
