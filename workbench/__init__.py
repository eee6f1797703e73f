"""workbench: predictive coding networks trained with equilibrium propagation.

Modules: ``models`` (PCNs, ``from_blocks``, the registry; ``resnet`` and ``vit`` register there),
``wiring`` (nodes and edges), ``layers`` (built-in layer maps), ``blocks`` (any module as a
layer), ``energy`` (E, F, costs), ``settings`` (``EstimatorSettings``), ``precision``,
``equilibrate`` (free and nudged phases), ``recording`` and ``diagnostics`` (what a phase did),
``kernels`` (its elementwise work), ``ep`` (estimators, BP reference, ``estimate``). The method:
docs/method.md.
"""
from .engine import (blocks, diagnostics, energy, ep, equilibrate, kernels, layers, models,
                     precision, recording, resnet, settings, vit, wiring)
from .engine.models import from_blocks
from .engine.settings import EstimatorSettings

__version__ = "0.1.0"
__all__ = ["models", "wiring", "layers", "blocks", "energy", "settings", "precision",
           "equilibrate", "recording", "diagnostics", "kernels", "ep", "resnet", "vit",
           "from_blocks", "EstimatorSettings", "__version__"]
