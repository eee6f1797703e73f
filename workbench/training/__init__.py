"""Training: one run of the engine on a dataset, into a run folder.

``config`` (``TrainConfig`` and its flags), ``presets`` (the paper's recipes), ``train`` (the
loop), ``runfolder`` (the run folder's files, written and read), ``distributed`` (torchrun),
``tracking`` (TensorBoard), ``progress``. Builds on the engine and data; knows nothing of sweeps.
"""
