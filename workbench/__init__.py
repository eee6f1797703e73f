"""workbench: predictive coding networks trained with equilibrium propagation.

Modules: ``models`` (PCN layers, registry), ``energy`` (E, F, costs), ``equilibrate`` (free and
nudged phases), ``ep`` (estimators, BP reference, ``estimate``).
"""
from . import energy, ep, equilibrate, models

__version__ = "0.1.0"
__all__ = ["models", "energy", "equilibrate", "ep", "__version__"]
