"""workbench: predictive coding networks trained with equilibrium propagation.

Modules: ``models`` (PCNs, registry), ``layers`` (layer maps), ``energy`` (E, F, costs),
``settings`` (``EstimatorSettings``), ``precision``, ``equilibrate`` (free and nudged phases),
``kernels`` (their elementwise work), ``ep`` (estimators, BP reference, ``estimate``). The method:
docs/method.md.
"""
from . import energy, ep, equilibrate, kernels, layers, models, precision, settings
from .settings import EstimatorSettings

__version__ = "0.1.0"
__all__ = ["models", "layers", "energy", "settings", "precision", "equilibrate", "kernels", "ep",
           "EstimatorSettings", "__version__"]
