"""The engine: a PCN's energy, its equilibration and the EP estimators (docs/method.md).

``models`` (PCNs, ``from_blocks``, the registry; ``resnet`` and ``vit`` register there),
``wiring`` (nodes and edges), ``layers`` (built-in layer maps), ``blocks`` (any module as a
layer), ``energy`` (E, F, costs), ``settings`` (``EstimatorSettings``), ``precision``,
``equilibrate`` (free and nudged phases), ``recording`` and ``diagnostics`` (what a phase did),
``kernels`` (its elementwise work), ``ep`` (estimators, BP reference, ``estimate``), ``pc``
(predictive coding's own training rules). Imports nothing from training or experiments.
"""
