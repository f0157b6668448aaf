"""Target X-rays formed in ways registration's own model did not: the appearance families.

::

    from xraypose.appearance import FAMILIES, form_xray
    fx = form_xray(volume, camera, camera_to_world, family="scatter", generator=g, spr=0.3)
    pre = xraypose.preprocess.preprocess(fx.raw, fx.camera, **fx.preprocess)

:data:`FAMILIES` maps each family's name to a short description;
:func:`form_xray` dispatches through it and returns a :class:`FormedXray`
(raw image, its camera and pose, how to preprocess it, every parameter drawn,
and the pixels whose content is not in the CT).  The families, their
parameter ranges and the sources of their physical constants are described
in docs/benchmarks.md ("Appearance families").

Modules: :mod:`.registry` (the registry and :func:`form_xray`),
:mod:`.families` (the families and their shared rendering chain),
:mod:`.attenuation` (NIST μ(E), tube spectra), :mod:`.detector` (scatter,
blur, noise, storage, display processing), :mod:`.implants` (metal shapes and
exact chords), :mod:`.femur` (femur masks of an unlabelled CT, moving a bone),
:mod:`.independent` (DiffDRR, optional), :mod:`.params` (drawing parameters).
"""

from xraypose.appearance import families as _families  # noqa: F401  (registers the families)
from xraypose.appearance.registry import FAMILIES, FormedXray, form_xray

__all__ = ["FAMILIES", "FormedXray", "form_xray"]
