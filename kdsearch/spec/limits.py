"""What a study file may ask for: the named data sets' inputs and the caps on every network.

Past these numbers a layer cannot be allocated, or takes hours per epoch on the images
kdsearch trains on; the architectures' own caps are in `architecture.py`.
"""

from __future__ import annotations

from kdsearch.architecture import MAX_CONV_LAYERS, MAX_DENSE_LAYERS

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder")
# What the named data sets look like, so a study file is checked against its input before any
# download: name -> ((channels, height, width), classes). `training/data.py` loads them.
NAMED_INPUTS = {
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}
MAX_PARAMS = 100_000_000  # per network: 400 MB of weights, 1.6 GB with gradients and Adam
MAX_PIXELS = 2**28  # synthetic data: pixel values in all, 1 GiB while drawn as floats
MAX_MLP_DEPTH = MAX_DENSE_LAYERS
MAX_CNN_DEPTH = 16  # conv blocks
MAX_CONVS_PER_BLOCK = MAX_CONV_LAYERS // MAX_CNN_DEPTH
# Residual families: what `ResNetArch` / `MobileNetArch` take (architecture.py).
MAX_STAGES = 6
MAX_STAGE_BLOCKS = 18
MAX_BASE_WIDTH = 1024
MAX_STAGED_KERNEL = 7
MAX_EXPANSION = 8
STAGED_FAMILIES = ("resnet", "mobilenet")
