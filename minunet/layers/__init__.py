"""The layers, as their math: one family per file, forward and backward side by side, plain
NumPy. The same layers computed by the Numba/BLAS kernels are in `minunet.kernels.layers`."""

from .activation import ReLU
from .batchnorm import BatchNorm2d
from .concat import Concat
from .conv import Conv2d
from .conv_transpose import ConvTranspose2d
from .pool import MaxPool2d

__all__ = [
    "BatchNorm2d",
    "Concat",
    "Conv2d",
    "ConvTranspose2d",
    "MaxPool2d",
    "ReLU",
]
