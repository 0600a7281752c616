"""The layers: one family per file, forward and backward side by side."""

from .activation import ReLU
from .batchnorm import BatchNorm2d, BatchNormReLU2d
from .concat import Concat
from .conv import Conv2d
from .conv_transpose import ConvTranspose2d
from .pool import MaxPool2d

__all__ = [
    "BatchNorm2d",
    "BatchNormReLU2d",
    "Concat",
    "Conv2d",
    "ConvTranspose2d",
    "MaxPool2d",
    "ReLU",
]
