"""Test-time registration (DiffPose's second stage): initialisers, optimisation, results."""

from xraypose.register.optimizer import (
    DEFAULT_LEVELS,
    FAST_LEVELS,
    Level,
    Registrar,
    RegistrationConfig,
    RegistrationResult,
    levels_for_sizes,
)

__all__ = ["DEFAULT_LEVELS", "FAST_LEVELS", "Level", "Registrar", "RegistrationConfig", "RegistrationResult",
           "levels_for_sizes"]
