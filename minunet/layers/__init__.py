"""The layers: one family per file, forward and backward side by side."""

from .activation import ReLU
from .batchnorm import BatchNorm2d
from .concat import Concat
from .pool import MaxPool2d


__all__ = ["BatchNorm2d", "Concat", "MaxPool2d", "ReLU"]
