"""minunet: a U-Net for cell instance segmentation, from scratch in NumPy and Numba.

Dimension letters, used in every shape comment of the package:

    N   batch size                  C    channels (Cin / Cout: in / out)
    H   height                      W    width
    Ho  output height               Wo   output width
    K   kernel size (square)        S    stride          P   padding
    Kc  number of classes (logits per pixel)

Arrays are NCHW: (N, C, H, W). Training runs in float32; every layer also runs in float64,
which is what the gradient checker uses.
"""

from . import data, metrics, viz
from .gradcheck import GradcheckError, GradcheckReport, gradcheck
from .layers.activation import ReLU
from .layers.batchnorm import BatchNorm2d
from .layers.concat import Concat
from .layers.conv import Conv2d
from .layers.conv_transpose import ConvTranspose2d
from .layers.pool import MaxPool2d
from .losses import CrossEntropyLoss, DiceLoss
from .module import Module, Parameter, Sequential
from .postprocess import to_instances
from .predict import normalize, predict

__version__ = "0.1.0"

__all__ = [
    "BatchNorm2d",
    "Concat",
    "Conv2d",
    "ConvTranspose2d",
    "CrossEntropyLoss",
    "DiceLoss",
    "GradcheckError",
    "GradcheckReport",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "__version__",
    "data",
    "gradcheck",
    "metrics",
    "normalize",
    "predict",
    "to_instances",
    "viz",
]
