"""Dataset preparation from the archives as distributed.

* ``python -m data_prep.imagenet --source DIR --dest DIR``: full ImageNet (ILSVRC2012) from the
  official tars (or Kaggle's ``ILSVRC/Data/CLS-LOC`` layout, or an extracted train folder) into
  ``dest/train/<wnid>/*.JPEG`` and ``dest/val/<wnid>/*.JPEG``, every file an RGB JPEG.
* ``python -m data_prep.imagenet32 --source DIR --dest DIR``: downsampled ImageNet 32×32 from
  ``Imagenet32_train_npz.zip`` / ``Imagenet32_val_npz.zip`` into the official ``.npz`` batches.

Both check the full set's counts, resume where they stopped and never modify the source.
"""
