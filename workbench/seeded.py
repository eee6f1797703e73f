"""One seeded model and batch — the common start of gradcheck, bench, the widgets and the tests:
the model from the registry (:mod:`workbench.engine.models`) and the images from
:func:`workbench.data.synthetic.images`, both seeded, so that two calls give the same numbers."""
from __future__ import annotations

from typing import Optional

import torch

from .data.synthetic import images
from .engine import models

__all__ = ["batch"]


def batch(model: str, n: int, *, num_classes: int = 10, in_channels: int = 1,
          image_size: Optional[int] = None, seed: int = 0, data_seed: Optional[int] = None,
          device="cpu", dtype: torch.dtype = torch.float32, **overrides):
    """``(net, x, y)``: model ``model`` built after ``torch.manual_seed(seed)`` (``overrides``
    go to :func:`workbench.engine.models.build`; ``image_size`` defaults to the model's registry
    size), and :func:`workbench.data.synthetic.images` drawn with ``data_seed`` (default ``seed``), all on ``device`` in
    ``dtype``."""
    size = image_size or models.default_image_size(model)
    torch.manual_seed(seed)
    net = models.build(model, num_classes=num_classes, in_channels=in_channels,
                       image_size=size, **overrides).to(device, dtype)
    x, y = images(n, in_channels, size, num_classes, seed if data_seed is None else data_seed,
                  dtype)
    return net, x.to(device), y.to(device)
